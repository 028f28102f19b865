"""AES-ECB for the batched backends, computed by OpenSSL (through ``cryptography``) with the
fastest code it has: its ECB, or its XTS with a tweak that masks nothing.

XTS-AES (IEEE Std 1619-2007 §5.3.1, NIST SP 800-38E) encrypts block j of a data unit as
C_j = E_K1(P_j XOR T_j) XOR T_j with T_j = E_K2(i) * alpha^j in GF(2^128). With a second
key K2 of our own and the tweak i = D_K2(0^128), E_K2(i) = 0, so every T_j is 0 and
C_j = E_K1(P_j): AES-ECB under K1, decryption likewise. On CPUs with AVX-512 and VAES,
OpenSSL 3.2 and later run XTS with 512-bit VAES while its ECB stays on 128-bit AES-NI
(measured through ``cryptography`` 48 with OpenSSL 4.0 on an AMD Zen 4 VM, 256 KiB a call:
AES-128 0.058 against 0.091 ns/B, AES-256 0.071 against 0.124), so there the XTS context is
the keystream's engine (docs/architecture.md, "AES engine").

Each context is checked against ECB on a known input when it is made and is not used if
they differ; XTS takes 16 bytes to 16 MiB a call (2^20 blocks, OpenSSL's data-unit limit) and
has no AES-192, so other lengths and keys get ECB. IPSECOFFLOAD_AES_ENGINE=ecb|xts forces a
choice (tests run both); unset or ``auto``, XTS is chosen where the CPU has AVX-512 and VAES
and a short timing at first use finds it faster.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ENGINE_ENV = "IPSECOFFLOAD_AES_ENGINE"
ENGINES = ("ecb", "xts")
XTS_MIN_BYTES = 16
XTS_MAX_BYTES = 1 << 24  # 2^20 AES blocks: OpenSSL refuses a larger XTS data unit

_engine: Optional[str] = None
# 64 blocks of a fixed pattern: the check a new XTS context passes against ECB
_CHECK = bytes((i * 37 + 11) & 0xFF for i in range(1024))


def engine() -> str:
    """The engine the backends use for AES-128 and AES-256 keystream: "xts" or "ecb"."""
    global _engine
    if _engine is None:
        text = os.environ.get(ENGINE_ENV, "").strip().lower()
        if text in ENGINES:
            _engine = text
        elif text in ("", "auto"):
            _engine = "xts" if _xts_is_faster() else "ecb"
        else:
            raise ValueError(f"{ENGINE_ENV} must be ecb, xts or auto, got {text[:20]!r}")
    return _engine


def engine_reset() -> None:
    """Read IPSECOFFLOAD_AES_ENGINE again at the next context (tests)."""
    global _engine
    _engine = None


def _cpu_has_vaes512() -> bool:
    from .. import _fastpath  # the CPUID reading of the GHASH paths
    return bool(_fastpath.cpu_has_vaes512())


def _xts_is_faster() -> bool:
    """Where OpenSSL can have a 512-bit VAES XTS: best of five 64 KiB calls of each."""
    try:
        if not _cpu_has_vaes512():
            return False
    except ImportError:  # the pure-Python kernels: no batched backend uses this
        return False
    key = os.urandom(16)
    xts = _xts_context(key, True)
    if xts is None:
        return False
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    data = bytearray(65536)
    out = bytearray(65536 + 16)
    best = {}
    for name, ctx in (("ecb", ecb), ("xts", xts)):
        ctx.update_into(data, out)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            ctx.update_into(data, out)
            runs.append(time.perf_counter() - start)
        best[name] = min(runs)
    return best["xts"] < 0.9 * best["ecb"]


def _xts_context(key: bytes, encrypt: bool):
    """An XTS context whose every call is AES-ECB under ``key``, checked; None if OpenSSL
    has none for this key length or it disagrees with ECB."""
    if len(key) not in (16, 32):
        return None
    while True:
        key2 = os.urandom(len(key))
        if key2 != key:  # XTS refuses K1 = K2
            break
    tweak = Cipher(algorithms.AES(key2), modes.ECB()).decryptor().update(bytes(16))
    try:
        cipher = Cipher(algorithms.AES(key + key2), modes.XTS(tweak))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        ecb = Cipher(algorithms.AES(key), modes.ECB())
        ref = (ecb.encryptor() if encrypt else ecb.decryptor()).update(_CHECK)
        # twice: every call is a data unit of its own, starting at block 0
        if ctx.update(_CHECK) != ref or ctx.update(_CHECK[:48]) != ref[:48]:
            return None
    except (ValueError, TypeError):  # this OpenSSL has no XTS for it
        return None
    return ctx


def block_context(key: bytes, encrypt: bool, max_bytes: int):
    """An AES-ECB context for calls of 16 to ``max_bytes`` bytes (block multiples): the XTS
    one where engine() says so and those sizes fit it, else ECB."""
    ctx = xts_block_context(key, encrypt, max_bytes)
    if ctx is not None:
        return ctx
    ecb = Cipher(algorithms.AES(key), modes.ECB())
    return ecb.encryptor() if encrypt else ecb.decryptor()


def xts_block_context(key: bytes, encrypt: bool, max_bytes: int):
    """block_context's XTS context, or None where it would be ECB."""
    if max_bytes <= XTS_MAX_BYTES and len(key) in (16, 32) and engine() == "xts":
        return _xts_context(key, encrypt)
    return None


__all__ = ["ENGINES", "ENGINE_ENV", "XTS_MAX_BYTES", "XTS_MIN_BYTES", "block_context",
           "engine", "engine_reset", "xts_block_context"]
