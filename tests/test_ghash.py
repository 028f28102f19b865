"""The GHASH / AES-GCM XOR+tag kernels (ipsecoffload/crypto/ghash.h) on every path this
machine can run, against OpenSSL through `cryptography` as the oracle.

The kernels take the keystream from outside (the GCM backend makes it with AES-ECB over the
counter blocks), so each case builds, with AES-ECB: H = AES_K(0^128), and for the 12-byte
nonce N of RFC 4106 the pre-counter block J0 = N || 00000001, EK(J0) and the keystream
AES_K(J0 + 1), AES_K(J0 + 2), ... (NIST SP 800-38D, 7.1). Then ciphertext || tag must be
AESGCM(K).encrypt(N, plaintext, aad).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import _fastpath as F

PATHS = F.ghash_usable_paths()
KEY_SIZES = (16, 24, 32)
AAD_SIZES = (0, 8, 12, 20, 33)
# AAD long enough for the wide loops and their remainders (16 leftover blocks at 241..256).
LONG_AAD_SIZES = (128, 240, 241, 255, 256, 257, 511, 600)
VECTORS = Path(__file__).parent / "vectors" / "wycheproof"


def _ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def _gcm_inputs(key: bytes, nonce: bytes, n: int) -> tuple[bytes, bytes, bytes]:
    """(H, EK(J0), n bytes of keystream) for a 12-byte nonce."""
    assert len(nonce) == 12
    blocks = b"".join(nonce + (i + 1).to_bytes(4, "big") for i in range((n + 15) // 16 + 1))
    out = _ecb(key, bytes(16) + blocks)
    return out[:16], out[16:32], out[32:32 + n]


def _seal(path: str, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> tuple[bytes, bytes]:
    h, ekj0, ks = _gcm_inputs(key, nonce, len(pt))
    return F.gcm_seal_raw(path, h, aad, pt, ks, ekj0)


def _check_seal(path: str, rnd: random.Random, n: int, alen: int, klen: int) -> None:
    key, nonce = rnd.randbytes(klen), rnd.randbytes(12)
    pt, aad = rnd.randbytes(n), rnd.randbytes(alen)
    ct, tag = _seal(path, key, nonce, pt, aad)
    want = AESGCM(key).encrypt(nonce, pt, aad)
    assert (ct, tag) == (want[:-16], want[-16:]), (path, n, alen, klen)


@pytest.fixture(params=PATHS)
def path(request) -> str:
    return request.param


def test_every_length_up_to_300(path):
    rnd = random.Random(300)
    for n in range(301):
        _check_seal(path, rnd, n, AAD_SIZES[n % len(AAD_SIZES)], KEY_SIZES[n % 3])


def _edge_lengths() -> list[int]:
    lengths = {1400, 1500, 4095, 4096, 4097, 8191, 8192, 8193, 9000}
    for m in (16, 64, 128, 256, 512):
        for k in range(1, 9000 // m + 1, max(1, (9000 // m) // 12)):
            lengths.update(n for n in (k * m - 1, k * m, k * m + 1) if 0 <= n <= 9000)
    return sorted(lengths)


def test_edge_lengths(path):
    rnd = random.Random(16)
    for i, n in enumerate(_edge_lengths()):
        _check_seal(path, rnd, n, AAD_SIZES[i % len(AAD_SIZES)], KEY_SIZES[i % 3])


def test_random_lengths(path):
    rnd = random.Random(9000)
    for i in range(150):
        _check_seal(path, rnd, rnd.randrange(9001), rnd.choice(AAD_SIZES), KEY_SIZES[i % 3])


def test_long_aad(path):
    rnd = random.Random(600)
    for alen in LONG_AAD_SIZES:
        for n in (0, 1, 16, 100, 255, 256, 257, 1400, 4000):
            _check_seal(path, rnd, n, alen, rnd.choice(KEY_SIZES))


def test_open_inverts_seal(path):
    rnd = random.Random(2)
    for i in range(120):
        n = rnd.randrange(3000) if i % 4 else rnd.randrange(300)
        key, nonce = rnd.randbytes(KEY_SIZES[i % 3]), rnd.randbytes(12)
        pt, aad = rnd.randbytes(n), rnd.randbytes(rnd.choice(AAD_SIZES + LONG_AAD_SIZES))
        h, ekj0, ks = _gcm_inputs(key, nonce, n)
        ct, tag = F.gcm_seal_raw(path, h, aad, pt, ks, ekj0)
        assert F.gcm_open_raw(path, h, aad, ct, ks, ekj0) == (pt, tag)
        assert AESGCM(key).decrypt(nonce, ct + tag, aad) == pt
        if n:  # a flipped ciphertext bit changes the tag computed on opening
            bad = bytearray(ct)
            bad[rnd.randrange(n)] ^= 1 << rnd.randrange(8)
            assert F.gcm_open_raw(path, h, aad, bytes(bad), ks, ekj0)[1] != tag


@pytest.mark.parametrize("icv", [8, 12])
def test_truncated_tags_are_prefixes(path, icv):
    """RFC 4106 ICVs of 8 and 12 bytes: the first bytes of the full tag, accepted by OpenSSL's
    GCM with a tag of that length."""
    rnd = random.Random(icv)
    for n in (0, 1, 64, 1400):
        key, nonce = rnd.randbytes(16), rnd.randbytes(12)
        pt, aad = rnd.randbytes(n), rnd.randbytes(12)
        ct, tag = _seal(path, key, nonce, pt, aad)
        mode = modes.GCM(nonce, tag[:icv], min_tag_length=icv)
        dec = Cipher(algorithms.AES(key), mode).decryptor()
        dec.authenticate_additional_data(aad)
        assert dec.update(ct) + dec.finalize() == pt
        mode = modes.GCM(nonce, bytes([tag[0] ^ 1]) + tag[1:icv], min_tag_length=icv)
        dec = Cipher(algorithms.AES(key), mode).decryptor()
        dec.authenticate_additional_data(aad)
        dec.update(ct)
        with pytest.raises(InvalidTag):
            dec.finalize()


def test_unaligned_inputs(path):
    rnd = random.Random(5)
    key, nonce = rnd.randbytes(32), rnd.randbytes(12)
    for n in (15, 64, 300, 1400):
        pt, aad = rnd.randbytes(n), rnd.randbytes(20)
        h, ekj0, ks = _gcm_inputs(key, nonce, n)
        want = F.gcm_seal_raw(path, h, aad, pt, ks, ekj0)
        for off in (1, 3, 7, 15):
            buf = bytearray(off) + bytearray(ks) + bytearray(aad)
            mv = memoryview(buf)
            assert F.gcm_seal_raw(path, h, mv[off + n:], pt, mv[off:off + n], ekj0) == want


def _source_splits(rnd):
    """(text length, source offset, source length) cases of the out-of-place tests: source
    at the start, in the middle, to the end, straddling chunk and head/tail boundaries, then
    random ones."""
    for n in (0, 1, 16, 100, 127, 128, 129, 255, 256, 257, 300, 1400, 4000):
        for at, k in ((0, n), (0, n // 2), (n // 3, n - n // 3), (n // 4, n // 2),
                      (min(n, 20), max(0, n - 23)), (n, 0)):
            yield n, at, k
    for _ in range(60):
        n = rnd.randrange(3000)
        at = rnd.randrange(n + 1)
        yield n, at, rnd.randrange(n - at + 1)


def test_seal_from_source_equals_in_place(path):
    """Out of place (ipo_gcm_seal_xor_ghash_from): the plaintext's bytes [at, at + n) read from
    a separate source, the text's own bytes there never read (they hold garbage here). Bit for
    bit the in-place seal of the assembled plaintext and OpenSSL's AES-GCM, every split: source
    at the start, in the middle, to the end, straddling chunk and head/tail boundaries."""
    rnd = random.Random(9)
    for n, at, k in _source_splits(rnd):
        key, nonce = rnd.randbytes(16), rnd.randbytes(12)
        pt, aad = rnd.randbytes(n), rnd.randbytes(rnd.choice(AAD_SIZES + LONG_AAD_SIZES))
        h, ekj0, ks = _gcm_inputs(key, nonce, n)
        garbage = pt[:at] + rnd.randbytes(k) + pt[at + k:]
        got = F.gcm_seal_from_raw(path, h, aad, garbage, pt[at:at + k], at, ks, ekj0)
        assert got == F.gcm_seal_raw(path, h, aad, pt, ks, ekj0), (n, at, k)
        assert got[0] + got[1] == AESGCM(key).encrypt(nonce, pt, aad), (n, at, k)
    with pytest.raises(ValueError):
        F.gcm_seal_from_raw(path, h, b"", b"abc", b"xy", 2, b"abc", ekj0)


def test_open_from_source_equals_in_place(path):
    """Out-of-place open (ipo_gcm_open_ghash_xor_from): the ciphertext's bytes [at, at + n)
    read from a separate source, the text's own bytes there never read. Bit for bit the
    in-place open and OpenSSL's AES-GCM (the tag over the ciphertext, the plaintext), every
    split; a forged ciphertext gives the tag of what was read, not of the garbage."""
    rnd = random.Random(10)
    for n, at, k in _source_splits(rnd):
        key, nonce = rnd.randbytes(16), rnd.randbytes(12)
        pt, aad = rnd.randbytes(n), rnd.randbytes(rnd.choice(AAD_SIZES + LONG_AAD_SIZES))
        h, ekj0, ks = _gcm_inputs(key, nonce, n)
        sealed = AESGCM(key).encrypt(nonce, pt, aad)
        ct, tag = sealed[:n], sealed[n:]
        garbage = ct[:at] + rnd.randbytes(k) + ct[at + k:]
        got = F.gcm_open_from_raw(path, h, aad, garbage, ct[at:at + k], at, ks, ekj0)
        assert got == F.gcm_open_raw(path, h, aad, ct, ks, ekj0), (n, at, k)
        assert got == (pt, tag), (n, at, k)
    with pytest.raises(ValueError):
        F.gcm_open_from_raw(path, h, b"", b"abc", b"xy", 2, b"abc", ekj0)


def test_short_messages_every_aad_and_length(path):
    """The short-message code of the 512-bit path (an AAD of at most 16 bytes, at most 224
    text bytes, ghash.h IPO__SHORT_TEXT) and its edges on every path: each AAD length 0..17
    with each text length 0..232, sealed and opened in place and out of place (a random
    source range), against OpenSSL's AES-GCM."""
    rnd = random.Random(224)
    for alen in range(18):
        for n in range(233):
            key, nonce = rnd.randbytes(16), rnd.randbytes(12)
            pt, aad = rnd.randbytes(n), rnd.randbytes(alen)
            h, ekj0, ks = _gcm_inputs(key, nonce, n)
            want = AESGCM(key).encrypt(nonce, pt, aad)
            got = F.gcm_seal_raw(path, h, aad, pt, ks, ekj0)
            assert got[0] + got[1] == want, (alen, n)
            assert F.gcm_open_raw(path, h, aad, want[:n], ks, ekj0) == (pt, want[n:]), (alen, n)
            at = rnd.randrange(n + 1)
            k = rnd.randrange(n - at + 1)
            garbage = pt[:at] + rnd.randbytes(k) + pt[at + k:]
            assert F.gcm_seal_from_raw(path, h, aad, garbage, pt[at:at + k], at, ks,
                                       ekj0) == got, (alen, n, at, k)
            ct = want[:n]
            garbage = ct[:at] + rnd.randbytes(k) + ct[at + k:]
            assert F.gcm_open_from_raw(path, h, aad, garbage, ct[at:at + k], at, ks,
                                       ekj0) == (pt, want[n:]), (alen, n, at, k)


def _wycheproof(name: str) -> list[dict]:
    data = json.loads((VECTORS / name).read_text())
    return [case for group in data["testGroups"] if group["ivSize"] == 96
            for case in group["tests"]]


GCM_CASES = _wycheproof("aes_gcm_test.json")
GMAC_CASES = _wycheproof("aes_gmac_test.json")


def test_wycheproof_gcm(path):
    results = set()
    for case in GCM_CASES:
        key, iv = bytes.fromhex(case["key"]), bytes.fromhex(case["iv"])
        aad, msg = bytes.fromhex(case["aad"]), bytes.fromhex(case["msg"])
        ct, tag = bytes.fromhex(case["ct"]), bytes.fromhex(case["tag"])
        h, ekj0, ks = _gcm_inputs(key, iv, len(ct))
        opened, got = F.gcm_open_raw(path, h, aad, ct, ks, ekj0)
        if case["result"] == "valid":
            assert (opened, got) == (msg, tag), case["tcId"]
            assert F.gcm_seal_raw(path, h, aad, msg, ks, ekj0) == (ct, tag), case["tcId"]
        else:
            assert got != tag, case["tcId"]
        results.add(case["result"])
    assert results == {"valid", "invalid"}


def test_wycheproof_gmac(path):
    """GMAC (RFC 4543): empty text, everything in the AAD."""
    for case in GMAC_CASES:
        key, iv = bytes.fromhex(case["key"]), bytes.fromhex(case["iv"])
        msg, tag = bytes.fromhex(case["msg"]), bytes.fromhex(case["tag"])
        h, ekj0, _ = _gcm_inputs(key, iv, 0)
        ct, got = F.gcm_seal_raw(path, h, msg, b"", b"", ekj0)
        assert ct == b""
        assert (got == tag) == (case["result"] == "valid"), case["tcId"]


def test_gmac_against_aesgcm(path):
    rnd = random.Random(4543)
    for alen in list(range(0, 80)) + [255, 256, 257, 1000, 1500, 4096]:
        key, nonce = rnd.randbytes(KEY_SIZES[alen % 3]), rnd.randbytes(12)
        aad = rnd.randbytes(alen)
        h, ekj0, _ = _gcm_inputs(key, nonce, 0)
        want = AESGCM(key).encrypt(nonce, b"", aad)
        assert F.gcm_seal_raw(path, h, aad, b"", b"", ekj0) == (b"", want)
        assert F.gcm_open_raw(path, h, aad, b"", b"", ekj0) == (b"", want)


def test_ghash_digest_is_tag_before_ekj0(path):
    rnd = random.Random(7)
    for n in (0, 1, 16, 17, 255, 256, 257, 1400, 5000):
        key, nonce = rnd.randbytes(16), rnd.randbytes(12)
        pt, aad = rnd.randbytes(n), rnd.randbytes(rnd.choice(AAD_SIZES + LONG_AAD_SIZES))
        h, ekj0, _ = _gcm_inputs(key, nonce, n)
        full = AESGCM(key).encrypt(nonce, pt, aad)
        s = F.ghash_digest(path, h, aad, full[:-16])
        assert bytes(a ^ b for a, b in zip(s, ekj0)) == full[-16:]
        assert s == F.ghash_digest("portable", h, aad, full[:-16])


def test_key_bytes():
    h = bytes(range(16))
    key = F.ghash_key_bytes(h)
    assert len(key) == F.GHASH_KEY_BYTES <= 1024
    assert key == F.ghash_key_bytes(h) != F.ghash_key_bytes(bytes(16))


# Fastest first; GHASH_PATHS holds the same names the other way round.
PREFERENCE = ("vpclmul512", "vpclmul256", "pclmul-avx", "pclmul", "portable")


def test_cpu_paths():
    cpu = F.ghash_cpu_paths()
    assert "portable" in cpu
    assert set(cpu) <= set(F.GHASH_PATHS)
    assert list(cpu) == [p for p in F.GHASH_PATHS if p in cpu]
    assert set(PATHS) <= set(cpu)
    assert "portable" in PATHS
    # each x86 path needs what the one before it needs (pclmul-avx: PCLMULQDQ and AVX)
    for slower, faster in zip(F.GHASH_PATHS[1:], F.GHASH_PATHS[2:]):
        assert faster not in cpu or slower in cpu, (slower, faster)


def _linux_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_cpu_paths_agree_with_the_kernel():
    """Linux lists avx only when the OS saves the YMM state, as ghash.h asks XCR0."""
    flags = _linux_cpu_flags()
    if not {"sse2", "pclmulqdq"} <= flags:
        pytest.skip("not an x86 Linux CPU with PCLMULQDQ")
    cpu = F.ghash_cpu_paths()
    assert ("pclmul" in cpu) == ({"ssse3", "sse4_1"} <= flags)
    assert ("pclmul-avx" in cpu) == ({"ssse3", "sse4_1", "avx"} <= flags)
    assert ("vpclmul256" in cpu) == ({"ssse3", "sse4_1", "avx", "avx2", "vpclmulqdq"} <= flags)


@pytest.mark.parametrize("name", F.GHASH_PATHS)
def test_selftest(name):
    assert F.ghash_selftest(name) == (name in F.ghash_usable_paths())
    if name not in F.ghash_cpu_paths():
        assert F.ghash_selftest(name) is False


def test_unknown_or_unusable_path_rejected():
    with pytest.raises(ValueError):
        F.ghash_selftest("sse9")
    h, e = bytes(16), bytes(16)
    with pytest.raises(ValueError):
        F.gcm_seal_raw("sse9", h, b"", b"abc", b"abc", e)
    for name in F.GHASH_PATHS:
        if name not in PATHS:  # must be refused, not run (it could fault on this CPU)
            with pytest.raises(ValueError, match="usable"):
                F.gcm_seal_raw(name, h, b"", b"abc", b"abc", e)
            with pytest.raises(ValueError, match="usable"):
                F.ghash_digest(name, h, b"", b"")


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        F.gcm_seal_raw("portable", bytes(15), b"", b"abc", b"abc", bytes(16))
    with pytest.raises(ValueError):
        F.gcm_seal_raw("portable", bytes(16), b"", b"abc", b"abc", bytes(17))
    with pytest.raises(ValueError):
        F.gcm_open_raw("portable", bytes(16), b"", b"abcd", b"abc", bytes(16))


@pytest.fixture
def fresh_default(monkeypatch):
    monkeypatch.delenv("IPSECOFFLOAD_GHASH", raising=False)
    F._ghash_reset_default()
    yield monkeypatch
    monkeypatch.undo()
    F._ghash_reset_default()


def test_default_is_fastest_usable(fresh_default):
    assert F.ghash_default_path() == PATHS[-1]
    fresh_default.setenv("IPSECOFFLOAD_GHASH", "portable")
    assert F.ghash_default_path() == PATHS[-1]  # chosen once, until reset


def test_default_is_the_preferred_usable_path(fresh_default):
    assert sorted(PREFERENCE) == sorted(F.GHASH_PATHS)
    assert F.GHASH_PATHS == PREFERENCE[::-1]
    want = next(p for p in PREFERENCE if p in PATHS)
    assert F.ghash_default_path() == want
    flags = _linux_cpu_flags()
    if {"pclmulqdq", "ssse3", "sse4_1", "avx"} <= flags and "vpclmulqdq" not in flags:
        assert want == "pclmul-avx"  # e.g. AMD Zen 3: the VEX-encoded 128-bit path


@pytest.mark.parametrize("name", [None] + list(PATHS))
def test_version_reports_the_path(name):
    """`ipsecoffload --version` names the path the kernels use (the default, or the forced one)."""
    root = str(Path(F.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    env.pop("IPSECOFFLOAD_GHASH", None)
    if name:
        env["IPSECOFFLOAD_GHASH"] = name
    out = subprocess.run([sys.executable, "-m", "ipsecoffload", "--version"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    want = name or next(p for p in PREFERENCE if p in PATHS)
    assert out.rstrip().endswith(f"GHASH path: {want}"), out


@pytest.mark.parametrize("name", PATHS)
def test_env_forces_path(fresh_default, name):
    fresh_default.setenv("IPSECOFFLOAD_GHASH", name)
    assert F.ghash_default_path() == name


@pytest.mark.parametrize("name", [p for p in F.GHASH_PATHS if p not in PATHS] + ["sse9"])
def test_env_naming_unusable_path_raises(fresh_default, name):
    fresh_default.setenv("IPSECOFFLOAD_GHASH", name)
    with pytest.raises(ValueError, match="usable: " + ", ".join(PATHS)):
        F.ghash_default_path()
    fresh_default.delenv("IPSECOFFLOAD_GHASH")
    assert F.ghash_default_path() == PATHS[-1]
