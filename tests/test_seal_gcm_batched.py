"""The batched AES-GCM / AES-GMAC backend against the reference backend (the oracle, one
`cryptography` call per op) on the same op tables: random payloads 0..9000 B, 128/192/256-bit
keys, ICV 8/12/16, ESN on and off, GMAC, on every GHASH path this machine can run; open
after seal, tampering, and ops that reach outside the arena."""
from __future__ import annotations

import numpy as np
import pytest

from ipsecoffload import _fastpath
from ipsecoffload.crypto.keys import SaKeys
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath.layout import CRYPTO_OP_DTYPE, Integrity, OpKind, OpStatus, Suite

PATHS = _fastpath.ghash_usable_paths()


@pytest.fixture(params=PATHS)
def ghash_path(request, monkeypatch):
    """Force one GHASH path for the test, then restore the default choice."""
    monkeypatch.setenv("IPSECOFFLOAD_GHASH", request.param)
    _fastpath._ghash_reset_default()
    assert _fastpath.ghash_default_path() == request.param
    yield request.param
    monkeypatch.delenv("IPSECOFFLOAD_GHASH")
    _fastpath._ghash_reset_default()


@pytest.fixture(params=["0", "default", "1000000000"], ids=["one-call", "crossover", "batched"])
def one_call_min(request, monkeypatch):
    """Where AES-GCM ops with a 16-byte tag become one OpenSSL call each: every one, above the
    default crossover, or none (IPSECOFFLOAD_GCM_ONE_CALL_MIN)."""
    if request.param != "default":
        monkeypatch.setenv("IPSECOFFLOAD_GCM_ONE_CALL_MIN", request.param)
    _fastpath.gcm_one_call_reset()
    yield request.param
    monkeypatch.delenv("IPSECOFFLOAD_GCM_ONE_CALL_MIN", raising=False)
    _fastpath.gcm_one_call_reset()


def _keys(rng, suite: Suite, key_bytes: int, icv_len: int, esn: bool) -> SaKeys:
    return SaKeys(suite, Integrity.AEAD, icv_len, esn, enc_key=rng.bytes(key_bytes),
                  salt=rng.bytes(4))


def _group(rng, keys: SaKeys, lengths, kind=OpKind.ESP_SEAL):
    """An arena of ESP packets (SPI | SN | IV | text | ICV) with guard bytes between them,
    and one op per packet."""
    parts, ops = [], np.zeros(len(lengths), CRYPTO_OP_DTYPE)
    pos = 0
    for i, n in enumerate(lengths):
        gap = int(rng.integers(0, 24))
        pos += gap
        parts.append(rng.bytes(gap))
        header = rng.bytes(16)  # SPI, SN, IV
        text = rng.bytes(n)
        icv = bytes(keys.icv_len)
        parts.append(header + text + icv)
        op = ops[i]
        op["auth_off"], op["text_off"], op["text_len"] = pos, pos + 16, n
        op["icv_off"], op["kind"], op["suite"] = pos + 16 + n, kind, keys.suite
        op["iv_len"], op["icv_len"], op["esn"] = 8, keys.icv_len, keys.esn
        op["seq_hi"] = int(rng.integers(0, 2**32))
        op["nonce"] = np.frombuffer(keys.salt + header[8:16], np.uint8)
        pos += len(header) + n + keys.icv_len
    parts.append(rng.bytes(16))
    return np.frombuffer(b"".join(parts), np.uint8).copy(), ops


def _seal_both(arena, ops, idx, keys):
    ref_arena, ref_ops = arena.copy(), ops.copy()
    ReferenceBackend().seal(ref_arena, ref_ops.view(np.uint8), idx, keys)
    got_arena, got_ops = arena.copy(), ops.copy()
    _fastpath.GcmBatchedBackend().seal(got_arena, got_ops.view(np.uint8), idx, keys)
    return (ref_arena, ref_ops), (got_arena, got_ops)


@pytest.mark.parametrize("key_bytes", [16, 24, 32])
@pytest.mark.parametrize("icv_len", [8, 12, 16])
@pytest.mark.parametrize("esn", [False, True])
def test_gcm_matches_the_reference_on_every_path(ghash_path, key_bytes, icv_len, esn,
                                                 one_call_min, aes_engine_forced):
    rng = np.random.default_rng([key_bytes, icv_len, esn, PATHS.index(ghash_path)])
    keys = _keys(rng, Suite.AES_GCM, key_bytes, icv_len, esn)
    lengths = [0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 1400, 9000] + [
        int(n) for n in rng.integers(0, 9001, 20)]
    arena, ops = _group(rng, keys, lengths)
    idx = rng.permutation(len(lengths)).astype(np.int32)
    (ref_arena, ref_ops), (got_arena, got_ops) = _seal_both(arena, ops, idx, keys)
    assert got_arena.tobytes() == ref_arena.tobytes()
    assert np.all(got_ops["status"] == OpStatus.DONE)


@pytest.mark.parametrize("key_bytes", [16, 24, 32])
@pytest.mark.parametrize("esn", [False, True])
def test_gmac_matches_the_reference_on_every_path(ghash_path, key_bytes, esn,
                                                  aes_engine_forced):
    rng = np.random.default_rng([key_bytes, esn, 7, PATHS.index(ghash_path)])
    keys = _keys(rng, Suite.AES_GMAC, key_bytes, 16, esn)
    lengths = [0, 4, 12, 20, 100, 1400, 9000] + [int(n) for n in rng.integers(0, 9001, 10)]
    arena, ops = _group(rng, keys, lengths)
    idx = np.arange(len(lengths), dtype=np.int32)
    (ref_arena, _), (got_arena, got_ops) = _seal_both(arena, ops, idx, keys)
    assert got_arena.tobytes() == ref_arena.tobytes()
    assert np.all(got_ops["status"] == OpStatus.DONE)


def test_a_group_larger_than_one_keystream_chunk_and_rows_left_alone(aes_engine_forced):
    """More keystream than one ECB call takes; rows outside idx keep every byte."""
    rng = np.random.default_rng(11)
    keys = _keys(rng, Suite.AES_GCM, 16, 16, False)
    lengths = [int(n) for n in rng.integers(1000, 9001, 300)]
    arena, ops = _group(rng, keys, lengths)
    idx = np.arange(0, len(lengths), 2, dtype=np.int32)
    assert sum(lengths[::2]) > 2 * _fastpath.GCM_KEYSTREAM_CHUNK
    (ref_arena, _), (got_arena, got_ops) = _seal_both(arena, ops, idx, keys)
    assert got_arena.tobytes() == ref_arena.tobytes()
    assert np.all(got_ops["status"][1::2] == OpStatus.PENDING)
    for i in range(1, len(lengths), 2):
        start, end = int(ops[i]["auth_off"]), int(ops[i]["icv_off"]) + 16
        assert got_arena[start:end].tobytes() == arena[start:end].tobytes()


@pytest.mark.parametrize("suite", [Suite.AES_GCM, Suite.AES_GMAC])
def test_open_after_seal_and_tampering(suite, one_call_min):
    rng = np.random.default_rng(int(suite))
    keys = _keys(rng, suite, 16, 16, True)
    lengths = [0, 16, 100, 1400, 3000, 9000]
    arena, ops = _group(rng, keys, lengths)
    plain = arena.copy()
    idx = np.arange(len(lengths), dtype=np.int32)
    backend = _fastpath.GcmBatchedBackend()
    backend.seal(arena, ops.view(np.uint8), idx, keys)
    ops["kind"] = OpKind.ESP_OPEN
    ops["status"] = OpStatus.PENDING
    opened = arena.copy()
    backend.open(opened, ops.view(np.uint8), idx, keys)
    assert np.all(ops["status"] == OpStatus.DONE)
    for i in range(len(lengths)):  # the text is back; the ICV stays
        start, end = int(ops[i]["auth_off"]), int(ops[i]["icv_off"])
        assert opened[start:end].tobytes() == plain[start:end].tobytes()
    for spot in ("spi", "iv", "icv", "seq_hi"):
        bad = arena.copy()
        bad_ops = ops.copy()
        bad_ops["status"] = OpStatus.PENDING
        target = bad_ops[len(lengths) - 1]
        if spot == "seq_hi":
            target["seq_hi"] ^= 1
        elif spot == "iv":  # the receive stage builds the nonce from the IV it reads
            bad[int(target["auth_off"]) + 9] ^= 0x40
            target["nonce"][5] ^= 0x40
        else:
            bad[{"spi": int(target["auth_off"]),
                 "icv": int(target["icv_off"]) + 15}[spot]] ^= 0x40
        backend.open(bad, bad_ops.view(np.uint8), idx, keys)
        assert bad_ops["status"].tolist() == [OpStatus.DONE] * (len(lengths) - 1) + [
            OpStatus.AUTH_FAILED], spot


@pytest.mark.parametrize("field,value", [
    ("text_len", 10**9), ("text_len", -1), ("auth_off", -1), ("icv_off", 10**12),
    ("text_off", 3), ("iv_len", 16), ("icv_len", 4), ("suite", Suite.AES_CBC_HMAC),
    ("auth_off", 2**62)])
def test_ops_reaching_outside_the_arena_are_refused_before_any_write(field, value):
    rng = np.random.default_rng(5)
    keys = _keys(rng, Suite.AES_GCM, 16, 16, False)
    arena, ops = _group(rng, keys, [64, 64])
    ops[1][field] = value
    before = arena.copy()
    with pytest.raises(ValueError):
        _fastpath.GcmBatchedBackend().seal(arena, ops.view(np.uint8),
                                           np.arange(2, dtype=np.int32), keys)
    assert arena.tobytes() == before.tobytes()


@pytest.mark.parametrize("idx", [[2], [-1], [0, 5]])
def test_idx_out_of_range_is_refused(idx):
    rng = np.random.default_rng(6)
    keys = _keys(rng, Suite.AES_GCM, 16, 16, False)
    arena, ops = _group(rng, keys, [64, 64])
    with pytest.raises(ValueError):
        _fastpath.GcmBatchedBackend().seal(arena, ops.view(np.uint8),
                                           np.asarray(idx, np.int32), keys)


def test_one_call_crossover_follows_the_cpu(monkeypatch):
    """OpenSSL's own GCM takes the large ops only where it is the faster one (AVX-512 with
    VPCLMULQDQ: its stitched VAES code), from a length that depends on the AES engine;
    elsewhere every op is batched."""
    monkeypatch.delenv("IPSECOFFLOAD_GCM_ONE_CALL_MIN", raising=False)
    _fastpath.gcm_one_call_reset()
    try:
        from ipsecoffload.crypto.aes_engine import engine
        expected = _fastpath.GCM_ONE_CALL_NEVER
        if "vpclmul512" in PATHS:  # the crossover of the engine in use (test_aes_engine.py)
            expected = (_fastpath.GCM_ONE_CALL_XTS if engine() == "xts"
                        else _fastpath.GCM_ONE_CALL_DEFAULT)
        assert _fastpath.gcm_one_call_min() == expected
        monkeypatch.setenv("IPSECOFFLOAD_GCM_ONE_CALL_MIN", "4096")
        _fastpath.gcm_one_call_reset()
        assert _fastpath.gcm_one_call_min() == 4096
    finally:
        monkeypatch.delenv("IPSECOFFLOAD_GCM_ONE_CALL_MIN", raising=False)
        _fastpath.gcm_one_call_reset()


def _out_of_place(rng, arena, ops):
    """The same group with each op's plaintext bytes [src_at, src_at + src_len) moved to a
    separate source arena (at random offsets) and replaced by garbage in the arena."""
    moved, table = arena.copy(), ops.copy()
    parts, pos = [], 0
    for op in table:
        n = int(op["text_len"])
        if n == 0 or rng.integers(0, 5) == 0:
            continue  # some ops stay in place
        at = int(rng.integers(0, n))
        k = int(rng.integers(1, n - at + 1))
        start = int(op["text_off"]) + at
        gap = int(rng.integers(0, 9))
        parts.append(rng.bytes(gap) + moved[start:start + k].tobytes())
        op["src_at"], op["src_off"], op["src_len"] = at, pos + gap, k
        pos += gap + k
        moved[start:start + k] = np.frombuffer(rng.bytes(k), np.uint8)
    return moved, table, np.frombuffer(b"".join(parts) + rng.bytes(8), np.uint8)


@pytest.mark.parametrize("icv_len", [8, 16])
def test_out_of_place_seal_matches_the_reference_on_every_path(ghash_path, icv_len,
                                                               one_call_min, aes_engine_forced):
    """Ops whose plaintext is partly in a source arena (tx_run's out-of-place seal): on every
    GHASH path, batched and one-call, the arena equals the reference's in-place seal and the
    ops end in place (src fields 0). The reference gets the same ops through ops_gather."""
    rng = np.random.default_rng([icv_len, 21, PATHS.index(ghash_path)])
    keys = _keys(rng, Suite.AES_GCM, 16, icv_len, False)
    lengths = [1, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1400, 9000] + [
        int(n) for n in rng.integers(1, 9001, 20)]
    arena, ops = _group(rng, keys, lengths)
    idx = rng.permutation(len(lengths)).astype(np.int32)
    ref_arena, ref_ops = arena.copy(), ops.copy()
    ReferenceBackend().seal(ref_arena, ref_ops.view(np.uint8), idx, keys)
    moved, table, src = _out_of_place(rng, arena, ops)
    assert table["src_len"].any()
    got_arena, got_ops = moved.copy(), table.copy()
    backend = _fastpath.GcmBatchedBackend()
    assert backend.reads_source
    backend.seal(got_arena, got_ops.view(np.uint8), idx, keys, src)
    assert got_arena.tobytes() == ref_arena.tobytes()
    assert got_ops.tobytes() == ref_ops.tobytes()
    via_arena, via_ops = moved.copy(), table.copy()
    _fastpath.run_op_groups(via_arena, via_ops.view(np.uint8), (keys,),
                            {int(Suite.AES_GCM): ReferenceBackend()}, "seal", src)
    assert via_arena.tobytes() == ref_arena.tobytes()
    assert via_ops.tobytes() == ref_ops.tobytes()


@pytest.mark.parametrize("icv_len", [8, 16])
def test_out_of_place_open_matches_the_reference_on_every_path(ghash_path, icv_len,
                                                               one_call_min, aes_engine_forced):
    """Ops whose ciphertext is partly in a source arena (rx_run's out-of-place open): on
    every GHASH path, batched and one-call, the statuses equal the reference's in-place open,
    the verified texts are the plaintext, and the ops end in place. Forged bytes in the
    source fail their op, as forged bytes in the arena would."""
    rng = np.random.default_rng([icv_len, 23, PATHS.index(ghash_path)])
    keys = _keys(rng, Suite.AES_GCM, 16, icv_len, False)
    lengths = [1, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1400, 9000] + [
        int(n) for n in rng.integers(1, 9001, 20)]
    plain, ops = _group(rng, keys, lengths)
    idx = rng.permutation(len(lengths)).astype(np.int32)
    sealed = plain.copy()
    ReferenceBackend().seal(sealed, ops.view(np.uint8), idx, keys)
    ops["kind"], ops["status"] = OpKind.ESP_OPEN, OpStatus.PENDING
    moved, table, src = _out_of_place(rng, sealed, ops)
    assert table["src_len"].any()
    src = src.copy()
    forged = [i for i in range(len(lengths)) if table["src_len"][i]][::3]
    for i in forged:  # one bit of the source's ciphertext
        src[int(table["src_off"][i]) + int(table["src_len"][i]) // 2] ^= 0x08
    ref_arena, ref_ops = sealed.copy(), ops.copy()
    for i in forged:
        ref_arena[int(ops["text_off"][i]) + int(table["src_at"][i])
                  + int(table["src_len"][i]) // 2] ^= 0x08
    ReferenceBackend().open(ref_arena, ref_ops.view(np.uint8), idx, keys)
    want = [OpStatus.AUTH_FAILED if i in forged else OpStatus.DONE for i in range(len(lengths))]
    assert ref_ops["status"].tolist() == want
    for open_with in ("batched", "reference via gather"):
        got_arena, got_ops = moved.copy(), table.copy()
        if open_with == "batched":
            backend = _fastpath.GcmBatchedBackend()
            backend.open(got_arena, got_ops.view(np.uint8), idx, keys, src)
        else:
            _fastpath.run_op_groups(got_arena, got_ops.view(np.uint8), (keys,),
                                    {int(Suite.AES_GCM): ReferenceBackend()}, "open", src)
        assert got_ops["status"].tolist() == want, open_with
        assert not got_ops["src_len"].any() and not got_ops["src_off"].any()
        for i in range(len(lengths)):
            if i in forged:
                continue
            start, end = int(ops[i]["text_off"]), int(ops[i]["icv_off"])
            assert got_arena[start:end].tobytes() == plain[start:end].tobytes(), (open_with, i)


def test_out_of_place_ops_are_refused_when_they_cannot_be_read():
    rng = np.random.default_rng(22)
    keys = _keys(rng, Suite.AES_GCM, 16, 16, False)
    arena, ops = _group(rng, keys, [100, 200])
    moved, table, src = _out_of_place(np.random.default_rng(0), arena, ops)
    table["src_len"][0], table["src_at"][0], table["src_off"][0] = 10, 0, 0
    idx = np.arange(2, dtype=np.int32)
    backend = _fastpath.GcmBatchedBackend()
    cases = [("no source", dict(), None), ("past the source", dict(src_off=len(src)), src),
             ("past the text", dict(src_at=95), src), ("negative", dict(src_len=-1), src)]
    for what, fields, source in cases:
        bad = table.copy()
        for name, value in fields.items():
            bad[name][0] = value
        before = moved.copy()
        with pytest.raises(ValueError):
            backend.seal(before, bad.view(np.uint8), idx, keys, source)
        assert before.tobytes() == moved.tobytes(), what
    with pytest.raises(ValueError, match="out of place"):
        backend.open(moved.copy(), table.copy().view(np.uint8), idx, keys)
    gmac = _keys(rng, Suite.AES_GMAC, 16, 16, False)
    g_arena, g_ops = _group(rng, gmac, [100])
    g_ops["src_len"] = 10
    with pytest.raises(ValueError, match="out of place"):
        backend.seal(g_arena, g_ops.view(np.uint8), np.zeros(1, np.int32), gmac, src)
