"""The cbc-hmac backend (crypto/seal_cbc_hmac.pxi) and its HMAC contexts (crypto/hmac_ctx.py).

The oracle works packet by packet with cryptography's own CBC mode and the standard
library's hmac, independent of the code under test (RFC 4303 §2.2.1, §3.3.2.1: the ICV
covers SPI .. ciphertext followed by the ESN high word, which is never sent).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import pickle
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsecoffload._fastpath import CbcHmacBackend
from ipsecoffload.crypto import aes_engine, hmac_ctx
from ipsecoffload.crypto.hmac_ctx import FORM_HMAC, FORM_PAIR, HmacTemplate
from ipsecoffload.datapath.layout import CRYPTO_OP_DTYPE, Integrity, OpKind, OpStatus, Suite

VECTORS = pathlib.Path(__file__).parent / "vectors" / "wycheproof"
CBC, NULL = Suite.AES_CBC_HMAC, Suite.NULL_HMAC
MD5, SHA1, SHA256 = Integrity.HMAC_MD5_96, Integrity.HMAC_SHA1_96, Integrity.HMAC_SHA256_128
HASH_NAME = {MD5: "md5", SHA1: "sha1", SHA256: "sha256"}
ICV_LEN = {MD5: 12, SHA1: 12, SHA256: 16}
OP_SIZE = CRYPTO_OP_DTYPE.itemsize
BACKEND = CbcHmacBackend()


def _md5_available() -> bool:
    try:
        hashlib.new("md5")
        HmacTemplate(MD5, b"k")
    except ValueError:
        return False
    return True


INTEGS = [pytest.param(MD5, marks=pytest.mark.skipif(not _md5_available(),
                                                     reason="MD5 unavailable (FIPS)")),
          SHA1, SHA256]


class Keys:
    """Stand-in for the datapath's per-SA key context: exactly the members the backend uses."""

    def __init__(self, suite, integrity, enc_key, auth_key, esn, *, icv_len=None,
                 template=None):
        self.suite, self.integrity, self.esn = suite, integrity, esn
        self.icv_len = ICV_LEN[integrity] if icv_len is None else icv_len
        self.hmac_template = template or HmacTemplate(integrity, auth_key)
        self._enc_key = enc_key

    def aes_encryptor(self, max_bytes):  # the engine of the test (tests/conftest.py)
        return aes_engine.block_context(self._enc_key, True, max_bytes) if self._enc_key \
            else None

    def aes_decryptor(self, max_bytes):
        return aes_engine.block_context(self._enc_key, False, max_bytes) if self._enc_key \
            else None


@dataclass
class Group:
    arena: np.ndarray
    ops: np.ndarray
    idx: np.ndarray
    keys: Keys
    enc_key: bytes
    auth_key: bytes

    def run(self, what: str, arena=None, ops=None) -> None:
        ops = self.ops if ops is None else ops
        getattr(BACKEND, what)(self.arena if arena is None else arena, ops.view(np.uint8),
                               self.idx, self.keys)

    def rows(self):
        return [int(r) for r in self.idx]


def build(rng, text_lens, suite=CBC, integ=SHA256, esn=False, *, key_len=16, spare_rows=3,
          kind=OpKind.ESP_SEAL, auth_key=None, form=None) -> Group:
    """Packets at arbitrary (unaligned) offsets of one arena, their ops scattered among
    rows of random bytes that the backend must not touch, idx in shuffled order."""
    iv_len = 16 if suite == CBC else 0
    icv_len = ICV_LEN[integ]
    n = len(text_lens)
    nrows = n + spare_rows
    rows = rng.permutation(nrows)[:n]
    ops = np.frombuffer(rng.bytes(nrows * OP_SIZE), CRYPTO_OP_DTYPE).copy()
    pos = int(rng.integers(0, 40))
    for row, text_len in zip(rows, text_lens):
        o = ops[row]
        o["auth_off"] = pos
        o["text_off"] = pos + 8 + iv_len
        o["text_len"] = text_len
        o["icv_off"] = pos + 8 + iv_len + text_len
        o["kind"], o["suite"], o["integ"] = kind, suite, integ
        o["iv_len"], o["icv_len"], o["esn"] = iv_len, icv_len, int(esn)
        o["status"] = OpStatus.PENDING
        pos += 8 + iv_len + text_len + icv_len + int(rng.integers(0, 37))
    size = pos + int(rng.integers(0, 29))
    arena = np.frombuffer(rng.bytes(size), np.uint8).copy()
    enc_key = rng.bytes(key_len) if suite == CBC else b""
    auth_key = rng.bytes(20 if integ == SHA1 else 32) if auth_key is None else auth_key
    template = HmacTemplate._with_form(integ, auth_key, form) if form else None
    keys = Keys(suite, integ, enc_key, auth_key, esn, template=template)
    idx = rng.permutation(rows).astype(np.int32)  # not in arena order either
    return Group(arena, ops, idx, keys, enc_key, auth_key)


def oracle_seal(g: Group, arena: np.ndarray, rows=None) -> np.ndarray:
    """A copy of arena with the ops of g sealed one at a time by cryptography and hmac."""
    out = arena.copy()
    for r in g.rows() if rows is None else rows:
        o = g.ops[r]
        a, t, n, c = (int(o[f]) for f in ("auth_off", "text_off", "text_len", "icv_off"))
        text = bytes(out[t:t + n])
        if o["suite"] == CBC:
            enc = Cipher(algorithms.AES(g.enc_key), modes.CBC(bytes(out[t - 16:t]))).encryptor()
            text = enc.update(text) + enc.finalize()
        esn_hi = struct.pack("!I", int(o["seq_hi"])) if o["esn"] else b""
        icv = hmac.new(g.auth_key, bytes(out[a:t]) + text + esn_hi,
                       HASH_NAME[int(o["integ"])]).digest()[:int(o["icv_len"])]
        out[t:t + n] = np.frombuffer(text, np.uint8)
        out[c:c + len(icv)] = np.frombuffer(icv, np.uint8)
    return out


def expected_ops(g: Group, statuses: dict[int, int]) -> np.ndarray:
    ops = g.ops.copy()
    for r, s in statuses.items():
        ops[r]["status"] = s
    return ops


def assert_ops(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.view(np.uint8).tobytes() == expected.view(np.uint8).tobytes()


def mixed_lengths(rng, n: int, block: int = 16) -> list[int]:
    """Multiples of block in [16, 9008], with the extremes always in the group."""
    lens = [int(x) * block for x in rng.integers(1, 9008 // block + 1, n)]
    if n >= 2:
        lens[0], lens[-1] = 16, 9008
    if n >= 7:
        lens[1:4] = [9008, 16, 32]
    return lens


def set_kind(g: Group, kind: OpKind) -> None:
    for r in g.rows():
        g.ops[r]["kind"] = kind


# -- seal --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 256])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("integ", INTEGS)
@pytest.mark.parametrize("key_len", [16, 24, 32])
def test_seal_cbc_matches_oracle(key_len, integ, esn, n, aes_engine_forced):
    rng = np.random.default_rng([key_len, int(integ), esn, n])
    g = build(rng, mixed_lengths(rng, n), CBC, integ, esn, key_len=key_len)
    want = oracle_seal(g, g.arena)
    g.run("seal")
    assert np.array_equal(g.arena, want)
    assert_ops(g.ops, expected_ops(g, {r: OpStatus.DONE for r in g.rows()}))


@pytest.mark.parametrize("n", [1, 2, 7, 256])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("integ", INTEGS)
def test_seal_null_matches_oracle(integ, esn, n):
    rng = np.random.default_rng([int(integ), esn, n, 4])
    lens = mixed_lengths(rng, n, block=4)
    lens[0] = 2  # only the pad length and next header (RFC 4303 §2.4)
    g = build(rng, lens, NULL, integ, esn)
    want = oracle_seal(g, g.arena)
    g.run("seal")
    assert np.array_equal(g.arena, want)
    assert_ops(g.ops, expected_ops(g, {r: OpStatus.DONE for r in g.rows()}))


@pytest.mark.parametrize("form", [FORM_HMAC, FORM_PAIR])
@pytest.mark.parametrize("suite", [CBC, NULL])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("integ", INTEGS)
def test_both_hmac_forms(integ, esn, suite, form):
    rng = np.random.default_rng([int(integ), esn, int(suite), form])
    g = build(rng, mixed_lengths(rng, 7), suite, integ, esn, form=form)
    assert g.keys.hmac_template._form == form
    plain = g.arena.copy()
    want = oracle_seal(g, plain)
    g.run("seal")
    assert np.array_equal(g.arena, want)
    set_kind(g, OpKind.ESP_OPEN)
    g.run("open")
    assert np.array_equal(g.arena, _icv_only(g, plain, want))
    assert all(g.ops[r]["status"] == OpStatus.DONE for r in g.rows())


def _icv_only(g: Group, plain: np.ndarray, sealed: np.ndarray) -> np.ndarray:
    """plain with the ICVs of sealed: what open leaves behind after seal."""
    out = plain.copy()
    for r in g.rows():
        c, n = int(g.ops[r]["icv_off"]), int(g.ops[r]["icv_len"])
        out[c:c + n] = sealed[c:c + n]
    return out


@pytest.mark.parametrize("key_len", [0, 1, 20, 63, 64, 65, 100, 200])
@pytest.mark.parametrize("integ", INTEGS)
def test_seal_hmac_key_lengths(integ, key_len):
    """Keys longer than the 64-byte block are hashed first (RFC 2104 §3)."""
    rng = np.random.default_rng([int(integ), key_len])
    for form in (FORM_HMAC, FORM_PAIR):
        g = build(rng, mixed_lengths(rng, 7), CBC, integ, True, auth_key=rng.bytes(key_len),
                  form=form)
        want = oracle_seal(g, g.arena)
        g.run("seal")
        assert np.array_equal(g.arena, want)


def test_seal_open_group_larger_than_the_gil_threshold():
    """Enough ops that every CBC round runs with the GIL released."""
    rng = np.random.default_rng(12)
    lens = [16 * int(x) for x in rng.integers(1, 5, 4200)]
    g = build(rng, lens, CBC, SHA1, True)
    plain = g.arena.copy()
    want = oracle_seal(g, plain)
    g.run("seal")
    assert np.array_equal(g.arena, want)
    set_kind(g, OpKind.ESP_OPEN)
    g.run("open")
    assert np.array_equal(g.arena, _icv_only(g, plain, want))


def test_concurrent_groups_in_threads():
    """Two threads, each with its own group and ECB contexts, seal at the same time."""
    import threading
    groups = []
    for seed in (13, 14):
        rng = np.random.default_rng(seed)
        groups.append(build(rng, [16 * int(x) for x in rng.integers(1, 4, 4200)], CBC,
                            SHA256, True))
    wants = [oracle_seal(g, g.arena) for g in groups]
    errors = []

    def work(g):
        try:
            g.run("seal")
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, want in zip(groups, wants):
        assert np.array_equal(g.arena, want)


def test_seal_op_at_arena_edges():
    """An op starting at byte 0 and one whose ICV ends on the last byte."""
    rng = np.random.default_rng(7)
    g = build(rng, [16, 48], CBC, SHA256, True)
    first = min(g.rows(), key=lambda r: int(g.ops[r]["auth_off"]))
    last = max(g.rows(), key=lambda r: int(g.ops[r]["icv_off"]))
    shift = int(g.ops[first]["auth_off"])
    g.arena = g.arena[shift:int(g.ops[last]["icv_off"]) + 16].copy()
    for r in g.rows():
        for f in ("auth_off", "text_off", "icv_off"):
            g.ops[r][f] -= shift
    assert int(g.ops[last]["icv_off"]) + 16 == len(g.arena)
    assert int(g.ops[first]["auth_off"]) == 0
    want = oracle_seal(g, g.arena)
    g.run("seal")
    assert np.array_equal(g.arena, want)


def test_seal_unaligned_ops_buffer():
    """ops may be a byte view at any address: rows are read with memcpy."""
    rng = np.random.default_rng(8)
    g = build(rng, mixed_lengths(rng, 7), CBC, SHA1, False)
    want = oracle_seal(g, g.arena)
    raw = bytearray(1 + g.ops.nbytes)
    raw[1:] = g.ops.tobytes()
    view = np.frombuffer(raw, np.uint8)[1:]
    BACKEND.seal(g.arena, view, g.idx, g.keys)
    assert np.array_equal(g.arena, want)
    got = np.frombuffer(bytes(view), CRYPTO_OP_DTYPE)
    assert_ops(got, expected_ops(g, {r: OpStatus.DONE for r in g.rows()}))


def test_empty_group_is_a_no_op():
    rng = np.random.default_rng(9)
    g = build(rng, [32], CBC, SHA256, False)
    before, ops_before = g.arena.copy(), g.ops.copy()
    for what in ("seal", "open"):
        getattr(BACKEND, what)(g.arena, g.ops.view(np.uint8), np.zeros(0, np.int32), g.keys)
        getattr(BACKEND, what)(np.zeros(0, np.uint8), np.zeros(0, np.uint8),
                               np.zeros(0, np.int32), g.keys)
    assert np.array_equal(g.arena, before)
    assert_ops(g.ops, ops_before)


def test_name():
    assert CbcHmacBackend.name == "cbc-hmac"
    assert BACKEND.name == "cbc-hmac"


# -- open --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 256])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("integ", INTEGS)
@pytest.mark.parametrize("suite_key", [(CBC, 16), (CBC, 24), (CBC, 32), (NULL, 0)])
def test_open_oracle_sealed(suite_key, integ, esn, n, aes_engine_forced):
    suite, key_len = suite_key
    rng = np.random.default_rng([int(suite), key_len, int(integ), esn, n, 1])
    g = build(rng, mixed_lengths(rng, n), suite, integ, esn, key_len=key_len or 16,
              kind=OpKind.ESP_OPEN)
    plain = g.arena.copy()
    g.arena = oracle_seal(g, plain)
    want = _icv_only(g, plain, g.arena)
    g.run("open")
    assert np.array_equal(g.arena, want)
    assert_ops(g.ops, expected_ops(g, {r: OpStatus.DONE for r in g.rows()}))


@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("suite", [CBC, NULL])
def test_seal_open_round_trip(suite, esn):
    rng = np.random.default_rng([int(suite), esn, 2])
    g = build(rng, mixed_lengths(rng, 256), suite, SHA256, esn)
    plain = g.arena.copy()
    g.run("seal")
    sealed = g.arena.copy()
    set_kind(g, OpKind.ESP_OPEN)
    for r in g.rows():
        g.ops[r]["status"] = OpStatus.PENDING
    g.run("open")
    assert np.array_equal(g.arena, _icv_only(g, plain, sealed))
    assert all(g.ops[r]["status"] == OpStatus.DONE for r in g.rows())


def test_open_spans_many_decrypt_buffers(aes_engine_forced):
    """More ciphertext than one ECB call takes: packets cut at buffer ends, and one packet
    longer than a whole buffer."""
    rng = np.random.default_rng(3)
    lens = [9008] * 60 + [16 * 20000] + [16, 1408] * 10
    g = build(rng, lens, CBC, SHA1, True, kind=OpKind.ESP_OPEN)
    plain = g.arena.copy()
    g.arena = oracle_seal(g, plain)
    want = _icv_only(g, plain, g.arena)
    g.run("open")
    assert np.array_equal(g.arena, want)
    assert all(g.ops[r]["status"] == OpStatus.DONE for r in g.rows())


TAMPER = {
    "spi": lambda o: int(o["auth_off"]),
    "sn": lambda o: int(o["auth_off"]) + 7,
    "iv": lambda o: int(o["text_off"]) - 1,
    "text_first": lambda o: int(o["text_off"]),
    "text_middle": lambda o: int(o["text_off"]) + int(o["text_len"]) // 2,
    "text_last": lambda o: int(o["text_off"]) + int(o["text_len"]) - 1,
    "icv_first": lambda o: int(o["icv_off"]),
    "icv_last": lambda o: int(o["icv_off"]) + int(o["icv_len"]) - 1,
}


@pytest.mark.parametrize("suite,field",
                         [(CBC, f) for f in sorted(TAMPER) + ["seq_hi"]]
                         + [(NULL, f) for f in sorted(TAMPER) + ["seq_hi"] if f != "iv"])
def test_open_tampered_fails_and_leaves_packet(field, suite):
    """(NULL encryption has no IV to tamper with.)"""
    rng = np.random.default_rng([len(field), int(suite)])
    g = build(rng, mixed_lengths(rng, 7), suite, SHA256, True, kind=OpKind.ESP_OPEN)
    plain = g.arena.copy()
    g.arena = oracle_seal(g, plain)
    bad = g.rows()[3]
    if field == "seq_hi":  # the ESN high word is authenticated though never sent
        g.ops[bad]["seq_hi"] ^= 1
    else:
        g.arena[TAMPER[field](g.ops[bad])] ^= 0x10
    tampered = g.arena.copy()
    g.run("open")
    a, c = int(g.ops[bad]["auth_off"]), int(g.ops[bad]["icv_off"]) + 16
    assert np.array_equal(g.arena[a:c], tampered[a:c])
    want = _icv_only(g, plain, tampered)
    want[a:c] = tampered[a:c]
    assert np.array_equal(g.arena, want)
    statuses = {r: OpStatus.DONE for r in g.rows()}
    statuses[bad] = OpStatus.AUTH_FAILED
    assert_ops(g.ops, expected_ops(g, statuses))


def test_open_all_fail():
    rng = np.random.default_rng(11)
    g = build(rng, mixed_lengths(rng, 7), CBC, SHA1, False, kind=OpKind.ESP_OPEN)
    before = g.arena.copy()
    g.run("open")  # random bytes: no ICV can verify
    assert np.array_equal(g.arena, before)
    assert_ops(g.ops, expected_ops(g, {r: OpStatus.AUTH_FAILED for r in g.rows()}))


# -- validation ----------------------------------------------------------------------------

BIG = 2 ** 63 - 1


def _shift_onto(g: Group, r: int, other: int) -> None:
    """Moves op r so that its SPI lands on the last ICV byte of op other."""
    d = int(g.ops[other]["icv_off"]) + int(g.ops[other]["icv_len"]) - 1 - int(g.ops[r]["auth_off"])
    for f in ("auth_off", "text_off", "icv_off"):
        g.ops[r][f] += d


BAD_OPS = {
    "auth_off negative": lambda g, o: o.__setitem__("auth_off", -1),
    "auth_off past arena": lambda g, o: o.__setitem__("auth_off", len(g.arena) + 1),
    "auth_off huge": lambda g, o: o.__setitem__("auth_off", BIG),
    "text_off negative": lambda g, o: o.__setitem__("text_off", -16),
    "text_off huge": lambda g, o: o.__setitem__("text_off", BIG),
    "text_off past arena": lambda g, o: o.__setitem__("text_off", len(g.arena) + 16),
    "no room for header and IV": lambda g, o: o.__setitem__("text_off", int(o["auth_off"]) + 23),
    "text_off before auth_off": lambda g, o: o.__setitem__("text_off", int(o["auth_off"]) - 16),
    "text_len negative": lambda g, o: o.__setitem__("text_len", -16),
    "text_len huge (sum overflows)": lambda g, o: o.__setitem__("text_len", BIG - 15),
    "text_len 2**62": lambda g, o: o.__setitem__("text_len", 2 ** 62),
    "text_len past arena": lambda g, o: o.__setitem__(
        "text_len", len(g.arena) - int(o["text_off"]) + 16),
    "text_len not a multiple of 16": lambda g, o: o.__setitem__("text_len", int(o["text_len"]) - 1),
    "text_len zero": lambda g, o: o.__setitem__("text_len", 0),
    "icv_off negative": lambda g, o: o.__setitem__("icv_off", -1),
    "icv_off huge": lambda g, o: o.__setitem__("icv_off", BIG),
    "icv_off min int64": lambda g, o: o.__setitem__("icv_off", -2 ** 63),
    "icv_off inside text": lambda g, o: o.__setitem__("icv_off", int(o["icv_off"]) - 1),
    "icv past arena": lambda g, o: o.__setitem__("icv_off", len(g.arena) - 15),
    "iv_len 0 for CBC": lambda g, o: o.__setitem__("iv_len", 0),
    "iv_len 8": lambda g, o: o.__setitem__("iv_len", 8),
    "icv_len differs": lambda g, o: o.__setitem__("icv_len", 12),
    "icv_len above digest": lambda g, o: o.__setitem__("icv_len", 33),
    "suite NULL": lambda g, o: o.__setitem__("suite", NULL),
    "suite GCM": lambda g, o: o.__setitem__("suite", Suite.AES_GCM),
    "integ differs": lambda g, o: o.__setitem__("integ", SHA1),
    "esn differs": lambda g, o: o.__setitem__("esn", 1),
    "esn not 0/1": lambda g, o: o.__setitem__("esn", 2),
    "kind AH": lambda g, o: o.__setitem__("kind", OpKind.AH_SIGN),
}


def _valid_group(kind: OpKind) -> Group:
    rng = np.random.default_rng(5)
    g = build(rng, [64, 9008, 16, 1408], CBC, SHA256, False, kind=kind)
    if kind == OpKind.ESP_OPEN:  # valid ICVs, so a lazily checking backend would decrypt
        g.arena = oracle_seal(g, g.arena)
    return g


def _assert_rejected(g: Group, what: str, ops_bytes=None, idx=None, keys=None,
                     match=None) -> None:
    before, ops_before = g.arena.copy(), g.ops.copy()
    with pytest.raises(ValueError, match=match):
        getattr(BACKEND, what)(g.arena, g.ops.view(np.uint8) if ops_bytes is None else ops_bytes,
                               g.idx if idx is None else idx, g.keys if keys is None else keys)
    assert np.array_equal(g.arena, before)
    assert_ops(g.ops, ops_before)


@pytest.mark.parametrize("what", ["seal", "open"])
@pytest.mark.parametrize("case", sorted(BAD_OPS))
def test_bad_op_rejected_before_any_write(case, what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    # the bad op is the last one checked: the valid ones before it must stay untouched too
    BAD_OPS[case](g, g.ops[g.rows()[-1]])
    _assert_rejected(g, what)


@pytest.mark.parametrize("what", ["seal", "open"])
def test_null_with_iv_rejected(what):
    rng = np.random.default_rng(6)
    g = build(rng, [64, 30, 2], NULL, SHA1, True,
              kind=OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    g.ops[g.rows()[-1]]["iv_len"] = 16
    _assert_rejected(g, what, match="iv_len")


@pytest.mark.parametrize("what", ["seal", "open"])
def test_wrong_kind_rejected(what):
    g = _valid_group(OpKind.ESP_OPEN if what == "seal" else OpKind.ESP_SEAL)
    _assert_rejected(g, what, match="kind")


@pytest.mark.parametrize("what", ["seal", "open"])
def test_overlapping_ops_rejected(what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    first = min(g.rows(), key=lambda r: int(g.ops[r]["auth_off"]))
    _shift_onto(g, next(r for r in reversed(g.rows()) if r != first), first)
    _assert_rejected(g, what, match="overlap")


@pytest.mark.parametrize("what", ["seal", "open"])
def test_duplicate_idx_rejected(what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    _assert_rejected(g, what, idx=np.concatenate([g.idx, g.idx[:1]]), match="overlap")


@pytest.mark.parametrize("what", ["seal", "open"])
@pytest.mark.parametrize("bad", [-1, "nrows", 2 ** 31 - 1, -2 ** 31])
def test_idx_out_of_range_rejected(bad, what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    bad = len(g.ops) if bad == "nrows" else bad
    _assert_rejected(g, what, idx=np.append(g.idx, np.int32(bad)).astype(np.int32),
                     match="idx")


@pytest.mark.parametrize("what", ["seal", "open"])
@pytest.mark.parametrize("cut", [1, OP_SIZE - 1, OP_SIZE + 1])
def test_ops_buffer_length_rejected(cut, what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    raw = g.ops.view(np.uint8)
    _assert_rejected(g, what, ops_bytes=raw[:len(raw) - cut], match="multiple")


BAD_KEYS = {
    "suite GCM": lambda k: setattr(k, "suite", Suite.AES_GCM),
    "integrity AEAD": lambda k: setattr(k, "integrity", Integrity.AEAD),
    "template of another hash": lambda k: setattr(k, "hmac_template", HmacTemplate(SHA1, b"k")),
    "icv_len above digest": lambda k: setattr(k, "icv_len", 33),
    "icv_len below 80 bits": lambda k: setattr(k, "icv_len", 8),
    "icv_len below half the digest": lambda k: setattr(k, "icv_len", 12),
}


@pytest.mark.parametrize("what", ["seal", "open"])
@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_bad_key_context_rejected(case, what):
    g = _valid_group(OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN)
    BAD_KEYS[case](g.keys)
    _assert_rejected(g, what)


# -- HmacTemplate -------------------------------------------------------------------------

def _wycheproof(name: str):
    data = json.loads((VECTORS / name).read_text())
    assert data["schema"] == "mac_test_schema_v1.json"
    for group in data["testGroups"]:
        assert group["type"] == "MacTest"
        for t in group["tests"]:
            yield group["keySize"], group["tagSize"], t


@pytest.mark.parametrize("form", [FORM_HMAC, FORM_PAIR])
@pytest.mark.parametrize("name, integ", [("hmac_sha1_test.json", SHA1),
                                         ("hmac_sha256_test.json", SHA256)])
def test_wycheproof_hmac(name, integ, form):
    seen = {"valid": 0, "invalid": 0}
    for key_bits, tag_bits, t in _wycheproof(name):
        key, msg, tag = (bytes.fromhex(t[f]) for f in ("key", "msg", "tag"))
        assert len(key) * 8 == key_bits and len(tag) * 8 == tag_bits  # tags may be truncated
        template = HmacTemplate._with_form(integ, key, form)
        mac = template.mac(msg)
        assert len(mac) == template.digest_size
        ok = hmac.compare_digest(mac[:tag_bits // 8], tag)
        assert ok == (t["result"] == "valid"), t["tcId"]
        seen[t["result"]] += 1
    assert seen["valid"] > 50 and seen["invalid"] > 50


@pytest.mark.parametrize("form", [FORM_HMAC, FORM_PAIR])
@pytest.mark.parametrize("integ", INTEGS)
def test_template_mac_matches_stdlib(integ, form):
    rng = np.random.default_rng([int(integ), form])
    for key_len in (0, 1, 16, 63, 64, 65, 129, 1000):
        key = rng.bytes(key_len)
        t = HmacTemplate._with_form(integ, key, form)
        assert t.digest_size == hashlib.new(HASH_NAME[integ]).digest_size
        for msg_len in (0, 1, 55, 56, 64, 1000):
            msg = rng.bytes(msg_len)
            assert t.mac(msg) == hmac.new(key, msg, HASH_NAME[integ]).digest()
            assert t.mac(memoryview(msg)) == t.mac(msg)  # the template is never consumed


def test_template_default_form():
    assert HmacTemplate(SHA256, b"key")._form == FORM_PAIR


def test_template_falls_back_when_hashlib_refuses(monkeypatch):
    """Under FIPS, hashlib refuses MD5: cryptography's HMAC is used instead."""
    def refuse(name, key, block):
        raise ValueError("[digital envelope routines] unsupported")

    monkeypatch.setattr(hmac_ctx, "_hashlib_pair", refuse)
    t = HmacTemplate(SHA256, b"key")
    assert t._form == FORM_HMAC
    assert t.mac(b"msg") == hmac.new(b"key", b"msg", "sha256").digest()


def test_template_rejects_unknown_integrity():
    with pytest.raises(ValueError):
        HmacTemplate(Integrity.AEAD, b"k")
    with pytest.raises(ValueError):
        HmacTemplate(99, b"k")


@pytest.mark.parametrize("form", [FORM_HMAC, FORM_PAIR])
@pytest.mark.parametrize("integ", INTEGS)
def test_template_repr_hides_key(integ, form):
    key = bytes(range(0x41, 0x41 + 40)) + bytes.fromhex("deadbeefcafe")
    t = HmacTemplate._with_form(integ, key, form)
    for text in (repr(t), str(t), f"{t!r}"):
        assert key.hex() not in text and key.hex()[:12] not in text
        assert repr(key) not in text and "deadbeef" not in text and "ABCDEF" not in text
    assert "hidden" in repr(t)
    with pytest.raises(TypeError):
        pickle.dumps(t)


def _int64(v: int) -> int:
    v &= 2 ** 64 - 1
    return v - 2 ** 64 if v >= 2 ** 63 else v


@pytest.mark.parametrize("what", ["seal", "open"])
@pytest.mark.parametrize("suite", [CBC, NULL])
def test_random_ops_never_write_outside_the_arena(suite, what):
    """Ops with fields drawn from edge values: either ValueError with nothing written, or
    success; the bytes around the arena never change."""
    rng = np.random.default_rng([int(suite), len(what)])
    size, guard = 512, 64
    edges = [0, 1, 7, 8, 15, 16, 24, 100, size - 16, size - 1, size, size + 1, 2 ** 62,
             2 ** 63 - 1, -1, -16, -2 ** 63]
    kind = OpKind.ESP_SEAL if what == "seal" else OpKind.ESP_OPEN
    keys = Keys(suite, SHA1, rng.bytes(16) if suite == CBC else b"", rng.bytes(20), True)
    accepted = 0
    for _ in range(1500):
        buf = np.frombuffer(rng.bytes(size + 2 * guard), np.uint8).copy()
        before = buf.copy()
        arena = buf[guard:guard + size]
        ops = np.zeros(3, CRYPTO_OP_DTYPE)
        for o in ops:
            a = int(rng.choice(edges)) if rng.random() < 0.3 else int(rng.integers(0, 200))
            t = a + 8 + (16 if suite == CBC else 0)
            n = 16 * int(rng.integers(0, 8))
            for f, v in (("auth_off", a), ("text_off", t), ("text_len", n), ("icv_off", t + n)):
                o[f] = _int64(v if rng.random() < 0.8 else int(rng.choice(edges)))
            o["kind"], o["suite"], o["integ"], o["esn"] = kind, suite, SHA1, 1
            o["iv_len"] = 16 if suite == CBC else 0
            o["icv_len"] = 12
        idx = rng.permutation(3)[:int(rng.integers(1, 4))].astype(np.int32)
        try:
            getattr(BACKEND, what)(arena, ops.view(np.uint8), idx, keys)
            accepted += 1
        except ValueError:
            assert np.array_equal(buf, before)
        assert np.array_equal(buf[:guard], before[:guard])
        assert np.array_equal(buf[guard + size:], before[guard + size:])
    assert accepted > 50
