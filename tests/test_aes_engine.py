"""The batched backends' AES engine (crypto/aes_engine.py): whichever context it hands out is
AES-ECB exactly, checked against cryptography's own ECB mode; XTS only where it can serve."""
from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsecoffload import _fastpath
from ipsecoffload.crypto import aes_engine
from ipsecoffload.crypto.keys import SaKeys
from ipsecoffload.datapath.layout import Integrity, Suite

SIZES = [16, 32, 48, 1024, 4096 + 16, 65536, 262144 + 48, 1 << 20]


def _ecb(key: bytes, encrypt: bool):
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    return cipher.encryptor() if encrypt else cipher.decryptor()


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypt", "decrypt"])
@pytest.mark.parametrize("key_len", [16, 24, 32])
def test_every_context_is_aes_ecb(aes_engine_forced, key_len, encrypt):
    """Calls of many sizes, in place in a numpy buffer as the backends make them, and the
    same context again and again: byte for byte cryptography's ECB."""
    rng = np.random.default_rng([key_len, encrypt])
    key = rng.bytes(key_len)
    ctx = aes_engine.block_context(key, encrypt, 1 << 20)
    ref = _ecb(key, encrypt)
    for n in SIZES + SIZES[::-1]:
        data = rng.bytes(n)
        buf = np.zeros(n + 16, np.uint8)
        buf[:n] = np.frombuffer(data, np.uint8)
        assert ctx.update_into(buf[:n], buf) == n
        assert buf[:n].tobytes() == ref.update(data)


def test_forced_xts_serves_aes_128_and_256_only(aes_engine_forced):
    for key_len in (16, 24, 32):
        keys = SaKeys(Suite.AES_GCM, Integrity.AEAD, 16, False, enc_key=os.urandom(key_len),
                      salt=os.urandom(4))
        fast, ecb = keys.aes_encryptor(4096), keys.ecb_encryptor()
        assert keys.aes_encryptor(4096) is fast  # one per thread, kept
        uses_xts = aes_engine_forced == "xts" and key_len != 24
        assert (fast is not ecb) == uses_xts
        assert (keys.aes_decryptor(4096) is not keys.ecb_decryptor()) == uses_xts


def test_calls_past_the_xts_data_unit_get_ecb(monkeypatch):
    monkeypatch.setenv(aes_engine.ENGINE_ENV, "xts")
    aes_engine.engine_reset()
    try:
        keys = SaKeys(Suite.AES_GCM, Integrity.AEAD, 16, False, enc_key=os.urandom(16),
                      salt=os.urandom(4))
        assert keys.aes_encryptor(aes_engine.XTS_MAX_BYTES) is not keys.ecb_encryptor()
        assert keys.aes_encryptor(aes_engine.XTS_MAX_BYTES + 16) is keys.ecb_encryptor()
        assert keys.aes_decryptor(aes_engine.XTS_MAX_BYTES + 16) is keys.ecb_decryptor()
    finally:
        aes_engine.engine_reset()


def test_an_xts_context_that_disagrees_with_ecb_is_not_used(monkeypatch):
    """The check at creation: an OpenSSL whose XTS answered otherwise (here: AES-256-ECB under
    K1 || K2 in its place) leaves the engine on ECB."""
    monkeypatch.setattr(aes_engine.modes, "XTS", lambda tweak: modes.ECB())
    key = os.urandom(16)
    assert aes_engine._xts_context(key, True) is None
    monkeypatch.setenv(aes_engine.ENGINE_ENV, "xts")
    aes_engine.engine_reset()
    try:
        ctx = aes_engine.block_context(key, True, 4096)
        assert ctx.update(bytes(64)) == _ecb(key, True).update(bytes(64))
    finally:
        aes_engine.engine_reset()


@pytest.mark.parametrize("text", ["", "auto", "AUTO", " ecb ", "XTS"])
def test_engine_setting(monkeypatch, text):
    monkeypatch.setenv(aes_engine.ENGINE_ENV, text)
    aes_engine.engine_reset()
    try:
        got = aes_engine.engine()
        assert got in aes_engine.ENGINES
        if text.strip().lower() in aes_engine.ENGINES:
            assert got == text.strip().lower()
        if text.strip().lower() in ("", "auto") and not _fastpath.cpu_has_vaes512():
            assert got == "ecb"
    finally:
        aes_engine.engine_reset()


def test_engine_setting_refused(monkeypatch):
    monkeypatch.setenv(aes_engine.ENGINE_ENV, "vaes-please")
    aes_engine.engine_reset()
    try:
        with pytest.raises(ValueError, match=aes_engine.ENGINE_ENV):
            aes_engine.engine()
    finally:
        aes_engine.engine_reset()


def test_the_one_call_crossover_follows_the_engine(aes_engine_forced):
    """AES-GCM ops of 8 KB (ECB engine) or 32 KB (XTS) and more are one OpenSSL call each
    where the 512-bit GHASH path runs; elsewhere none is."""
    want = _fastpath.GCM_ONE_CALL_NEVER
    if "vpclmul512" in _fastpath.ghash_usable_paths():
        want = (_fastpath.GCM_ONE_CALL_XTS if aes_engine_forced == "xts"
                else _fastpath.GCM_ONE_CALL_DEFAULT)
    assert _fastpath.gcm_one_call_min() == want
