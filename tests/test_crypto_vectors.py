"""Wycheproof known-answer vectors through our crypto layer (ipsecoffload.crypto).

Source and licence of the data: tests/vectors/README.md. Each algorithm is checked where the
vectors allow it at the ESP level (an arena laid out as SPI | SN | IV | text | ICV, sealed by
the reference backend's ``seal_one`` / ``seal``), and otherwise at the ``SaKeys`` level (the
AESGCM object or HMAC template the backend uses). Invalid cases carry a modified tag: our
output must differ from it.
"""
from __future__ import annotations

import hashlib
import hmac as std_hmac
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import _fastpath
from ipsecoffload.crypto import SaKeys
from ipsecoffload.crypto.reference import ReferenceBackend, seal_one
from ipsecoffload.datapath.layout import CRYPTO_OP_DTYPE, OpKind, OpStatus, Integrity, Suite
from ipsecoffload.datapath.tx import run_ops

# The reference backend (the oracle) and every compiled backend that serves GCM/GMAC.
GCM_BACKENDS = [ReferenceBackend()] + ([_fastpath.GcmBatchedBackend()]
                                       if hasattr(_fastpath, "GcmBatchedBackend") else [])

VECTORS = Path(__file__).parent / "vectors" / "wycheproof"
GUARD = bytes(range(0xA0, 0xB0))  # bytes around every ESP packet: sealing must not touch them


def _cases(name: str, keep=lambda group, case: True) -> list[tuple[dict, dict]]:
    data = json.loads((VECTORS / name).read_text())
    return [(group, case) for group in data["testGroups"] for case in group["tests"]
            if keep(group, case)]


def _ids(cases) -> list[str]:
    return [f"tc{case['tcId']}-{case['result']}" for _, case in cases]


def _h(case: dict, field: str) -> bytes:
    return bytes.fromhex(case[field])


# RFC 4106 / 4543: the nonce is salt(4) || explicit IV(8). Cases with another IV size
# (Wycheproof tests long, short and empty GCM IVs) cannot occur in IPsec: filtered out.
def _ipsec_iv(group: dict, case: dict) -> bool:
    return len(case["iv"]) == 24


GCM = _cases("aes_gcm_test.json", _ipsec_iv)
GMAC = _cases("aes_gmac_test.json", _ipsec_iv)
# An ESP packet's AAD is SPI || SN (8 bytes) or SPI || SN_hi || SN_lo (12, ESN). No case of
# this Wycheproof release has a 12-byte AAD; the ESN layout is checked against AESGCM below.
GCM_ESP = [(g, c) for g, c in GCM if len(c["aad"]) == 16 and c["result"] == "valid"]
# ICV lengths (bits) IPsec uses: HMAC-SHA1-96, HMAC-SHA-256-128, and the untruncated MACs
# against which the truncation is checked. (The SHA-1 file's 80-bit tags are not ICVs.)
HMAC_TAG_BITS = (96, 128, 160, 256)
HMAC_SHA1 = _cases("hmac_sha1_test.json", lambda g, c: g["tagSize"] in HMAC_TAG_BITS)
HMAC_SHA256 = _cases("hmac_sha256_test.json", lambda g, c: g["tagSize"] in HMAC_TAG_BITS)
CBC = _cases("aes_cbc_pkcs5_test.json", lambda g, c: c["result"] == "valid")


def test_the_vector_files_hold_what_the_tests_expect():
    assert len(GCM) == 197 and len(GCM_ESP) == 5
    assert any(c["result"] == "invalid" for _, c in GCM)
    assert len(GMAC) == 207 and any(c["result"] == "invalid" for _, c in GMAC)
    assert {g["tagSize"] for g, _ in HMAC_SHA1} == {160}
    assert {g["tagSize"] for g, _ in HMAC_SHA256} == {128, 256}
    assert len(CBC) == 72


def _esp_arena(spi_sn: bytes, iv: bytes, text: bytes, icv_len: int) -> tuple[bytearray, int]:
    """GUARD | SPI SN | IV | text | ICV slot | GUARD, and the offset of the ESP header."""
    arena = bytearray(GUARD + spi_sn + iv + text + bytes(icv_len) + GUARD)
    return arena, len(GUARD)


def _guards_intact(arena: bytearray) -> bool:
    return arena[:len(GUARD)] == GUARD and arena[-len(GUARD):] == GUARD


# -- AES-GCM (RFC 4106) ---------------------------------------------------------------------

def _gcm_keys(case: dict, icv_len: int, esn: bool = False) -> SaKeys:
    iv = _h(case, "iv")
    return SaKeys(Suite.AES_GCM, Integrity.AEAD, icv_len, esn, enc_key=_h(case, "key"),
                  salt=iv[:4])


@pytest.mark.parametrize("icv_len", [16, 12, 8])
@pytest.mark.parametrize("group,case", GCM, ids=_ids(GCM))
def test_gcm_aead(group, case, icv_len):
    """The SA's AESGCM object with nonce salt || IV(8): ct || leftmost icv_len tag bytes."""
    keys = _gcm_keys(case, icv_len)
    iv, msg, ct, tag = _h(case, "iv"), _h(case, "msg"), _h(case, "ct"), _h(case, "tag")
    sealed = keys.aead.encrypt(keys.salt + iv[4:], msg, _h(case, "aad"))
    assert sealed[:len(msg)] == ct
    if case["result"] == "valid":
        assert sealed[len(msg):len(msg) + icv_len] == tag[:icv_len]
    else:  # ModifiedTag: the expected tag is wrong
        assert sealed[len(msg):] != tag


@pytest.mark.parametrize("icv_len", [16, 12, 8])
@pytest.mark.parametrize("group,case", GCM_ESP, ids=_ids(GCM_ESP))
def test_gcm_esp_layout(group, case, icv_len):
    """seal_one on an ESP packet whose SPI || SN is the case's AAD: the text becomes ct and
    the ICV slot the leftmost icv_len tag bytes; nothing outside the packet changes."""
    keys = _gcm_keys(case, icv_len)
    iv, msg = _h(case, "iv"), _h(case, "msg")
    arena, esp = _esp_arena(_h(case, "aad"), iv[4:], msg, icv_len)
    text = esp + 16
    seal_one(memoryview(arena), keys, esp, text, len(msg), text + len(msg), 0)
    assert arena[text:text + len(msg) + icv_len] == _h(case, "ct") + _h(case, "tag")[:icv_len]
    assert arena[esp:text] == _h(case, "aad") + iv[4:]
    assert _guards_intact(arena)


class _KeyTable:
    """What run_ops reads of an SA table: the key context per key row."""

    def __init__(self, keys):
        self.keys = tuple(keys)


@pytest.mark.parametrize("backend", GCM_BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("icv_len", [16, 12, 8])
def test_gcm_esp_layout_batch_through_the_backend(icv_len, backend):
    """Every ESP-layout case in one arena, one op each, sealed through the op table by
    run_ops (one backend call per key context)."""
    arena, jobs, keys = bytearray(), [], []
    for slot, (_, case) in enumerate(GCM_ESP):
        iv, msg = _h(case, "iv"), _h(case, "msg")
        packet, esp = _esp_arena(_h(case, "aad"), iv[4:], msg, icv_len)
        base = len(arena)
        arena += packet
        text = base + esp + 16
        jobs.append((slot, base + esp, text, len(msg), text + len(msg)))
        keys.append(_gcm_keys(case, icv_len))
    ops = np.zeros(len(jobs), CRYPTO_OP_DTYPE)
    for j, (slot, esp, text, text_len, icv) in enumerate(jobs):
        ops[j]["auth_off"], ops[j]["text_off"], ops[j]["text_len"] = esp, text, text_len
        ops[j]["icv_off"], ops[j]["key_row"], ops[j]["kind"] = icv, slot, OpKind.ESP_SEAL
        ops[j]["suite"], ops[j]["iv_len"], ops[j]["icv_len"] = Suite.AES_GCM, 8, icv_len
        ops[j]["nonce"] = np.frombuffer(keys[slot].salt + bytes(arena[esp + 8:text]), np.uint8)
    out = np.frombuffer(arena, np.uint8).copy()
    run_ops(out, ops.view(np.uint8), _KeyTable(keys), {Suite.AES_GCM: backend}, _fastpath,
            "seal")
    assert np.all(ops["status"] == OpStatus.DONE)
    for (slot, esp, text, text_len, icv), (_, case) in zip(jobs, GCM_ESP):
        assert out[text:icv + icv_len].tobytes() == (_h(case, "ct")
                                                     + _h(case, "tag")[:icv_len])
        assert out[esp - len(GUARD):esp].tobytes() == GUARD


@pytest.mark.parametrize("icv_len", [16, 12, 8])
@pytest.mark.parametrize("group,case", GCM_ESP, ids=_ids(GCM_ESP))
def test_gcm_esp_layout_esn(group, case, icv_len):
    """ESN: the AAD is SPI || SN_hi || SN_lo (RFC 4106 §5). No Wycheproof case has a 12-byte
    AAD, so the oracle is a fresh AESGCM with that AAD built by hand."""
    seq_hi = 0x01020304
    keys = _gcm_keys(case, icv_len, esn=True)
    iv, msg, spi_sn = _h(case, "iv"), _h(case, "msg"), _h(case, "aad")
    arena, esp = _esp_arena(spi_sn, iv[4:], msg, icv_len)
    text = esp + 16
    seal_one(memoryview(arena), keys, esp, text, len(msg), text + len(msg), seq_hi)
    aad = spi_sn[:4] + struct.pack("!I", seq_hi) + spi_sn[4:]
    expect = AESGCM(_h(case, "key")).encrypt(iv, msg, aad)
    assert arena[text:text + len(msg) + icv_len] == expect[:len(msg) + icv_len]
    assert arena[text:text + len(msg)] == _h(case, "ct")  # ESN changes the tag only
    assert _guards_intact(arena)


# -- AES-GMAC (RFC 4543) --------------------------------------------------------------------
# Wycheproof's GMAC "msg" is the authenticated data: GCM with it as AAD and an empty
# plaintext, which is exactly how the GMAC suite uses its AESGCM object.

def _gmac_keys(case: dict, esn: bool = False) -> SaKeys:
    return SaKeys(Suite.AES_GMAC, Integrity.AEAD, 16, esn, enc_key=_h(case, "key"),
                  salt=_h(case, "iv")[:4])


@pytest.mark.parametrize("group,case", GMAC, ids=_ids(GMAC))
def test_gmac(group, case):
    keys = _gmac_keys(case)
    tag = keys.aead.encrypt(keys.salt + _h(case, "iv")[4:], b"", _h(case, "msg"))
    if case["result"] == "valid":
        assert tag == _h(case, "tag")
    else:
        assert tag != _h(case, "tag")


GMAC_ESP = [(g, c) for g, c in GMAC if c["result"] == "valid"][:12]


@pytest.mark.parametrize("esn", [False, True], ids=["plain", "esn"])
@pytest.mark.parametrize("group,case", GMAC_ESP, ids=_ids(GMAC_ESP))
def test_gmac_esp_layout(group, case, esn):
    """seal_one for the GMAC suite: text stays clear, the ICV is the GCM tag over
    SPI || [SN_hi] || SN || IV || text (RFC 4543 §3). Oracle: a fresh AESGCM."""
    seq_hi = 0xA1B2C3D4
    keys = _gmac_keys(case, esn)
    iv, msg = _h(case, "iv"), _h(case, "msg")
    spi_sn = b"\x00\x00\x10\x01\x00\x00\x00\x2a"
    arena, esp = _esp_arena(spi_sn, iv[4:], msg, 16)
    text = esp + 16
    seal_one(memoryview(arena), keys, esp, text, len(msg), text + len(msg), seq_hi)
    hi = struct.pack("!I", seq_hi) if esn else b""
    aad = spi_sn[:4] + hi + spi_sn[4:] + iv[4:] + msg
    assert arena[text:text + len(msg)] == msg
    assert arena[text + len(msg):text + len(msg) + 16] == AESGCM(_h(case, "key")).encrypt(
        iv, b"", aad)
    assert _guards_intact(arena)


# -- HMAC-SHA1-96 / HMAC-SHA-256-128 (RFC 2404 / 4868) ----------------------------------------

HMACS = ([("sha1", Integrity.HMAC_SHA1_96, 12, g, c) for g, c in HMAC_SHA1]
         + [("sha256", Integrity.HMAC_SHA256_128, 16, g, c) for g, c in HMAC_SHA256])


@pytest.mark.parametrize("name,integ,icv_len,group,case", HMACS,
                         ids=[f"{n}-{g['tagSize']}-tc{c['tcId']}-{c['result']}"
                              for n, _, _, g, c in HMACS])
def test_hmac(name, integ, icv_len, group, case):
    """SaKeys(...).hmac() over msg, truncated to the case's tag size and to the ICV length."""
    keys = SaKeys(Suite.NULL_HMAC, integ, icv_len, False, auth_key=_h(case, "key"))
    mac = keys.hmac()
    mac.update(_h(case, "msg"))
    full, tag = mac.finalize(), _h(case, "tag")
    if case["result"] == "valid":
        assert full[:len(tag)] == tag
        if len(tag) >= icv_len:
            assert full[:icv_len] == tag[:icv_len]
    else:
        assert full[:len(tag)] != tag
    # the template is not consumed: a second context gives the same MAC
    again = keys.hmac()
    again.update(_h(case, "msg"))
    assert again.finalize() == full


HMAC_ESP = [h for h in HMACS if h[4]["result"] == "valid" and len(h[4]["msg"]) >= 24
            and h[3]["tagSize"] >= 8 * h[2]]


@pytest.mark.parametrize("esn", [False, True], ids=["plain", "esn"])
@pytest.mark.parametrize("name,integ,icv_len,group,case", HMAC_ESP,
                         ids=[f"{n}-{g['tagSize']}-tc{c['tcId']}" for n, _, _, g, c in HMAC_ESP])
def test_hmac_esp_layout(name, integ, icv_len, group, case, esn):
    """NULL encryption + HMAC through seal_one: the ICV input is SPI || SN || text, with ESN
    the high-order SN appended (RFC 4303 §2.2.1). The case's msg is laid out as that input:
    msg = SPI || SN || text (|| SN_hi with ESN), so the ICV is the case's tag, truncated."""
    msg = _h(case, "msg")
    seq_hi = 0
    if esn:
        msg, seq_hi = msg[:-4], struct.unpack("!I", msg[-4:])[0]
    keys = SaKeys(Suite.NULL_HMAC, integ, icv_len, esn, auth_key=_h(case, "key"))
    arena, esp = _esp_arena(msg[:8], b"", msg[8:], icv_len)
    text = esp + 8
    end = text + len(msg) - 8
    seal_one(memoryview(arena), keys, esp, text, len(msg) - 8, end, seq_hi)
    assert arena[esp:end] == msg  # NULL encryption leaves the text as it is
    assert arena[end:end + icv_len] == _h(case, "tag")[:icv_len]
    assert _guards_intact(arena)


# -- AES-CBC (RFC 3602) ---------------------------------------------------------------------
# The vectors are PKCS#5-padded. ESP pads its own way, so only the CBC relation is used:
# the expected ciphertext is E(msg || PKCS#5 pad); we hand exactly those full blocks to the
# SA as ESP text and compare (and every prefix of whole blocks of msg alone, since CBC
# ciphertext blocks depend only on the blocks before them).

@pytest.mark.parametrize("group,case", CBC, ids=_ids(CBC))
def test_cbc_esp_layout(group, case):
    key, iv, msg, ct = _h(case, "key"), _h(case, "iv"), _h(case, "msg"), _h(case, "ct")
    pad = 16 - len(msg) % 16
    auth_key = bytes(range(20))
    keys = SaKeys(Suite.AES_CBC_HMAC, Integrity.HMAC_SHA1_96, 12, False, enc_key=key,
                  auth_key=auth_key)
    spi_sn = b"\x00\x00\x20\x02\x00\x00\x00\x07"
    for text_bytes, expect in ((msg + bytes([pad]) * pad, ct),
                               (msg[:len(msg) // 16 * 16], ct[:len(msg) // 16 * 16])):
        arena, esp = _esp_arena(spi_sn, iv, text_bytes, 12)
        text = esp + 8 + 16
        end = text + len(text_bytes)
        seal_one(memoryview(arena), keys, esp, text, len(text_bytes), end, 0)
        assert arena[text:end] == expect
        assert arena[esp:text] == spi_sn + iv  # the IV stays in clear
        # encrypt-then-MAC: HMAC-SHA1 over SPI .. ciphertext (stdlib as the oracle)
        assert arena[end:end + 12] == std_hmac.new(auth_key, bytes(arena[esp:end]),
                                                   hashlib.sha1).digest()[:12]
        assert _guards_intact(arena)
