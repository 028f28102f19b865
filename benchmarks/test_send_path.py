"""Send path over prebuilt frames, batch 256, transport over IPv4 (docs/benchmarks.md), with
the raw cipher (limit) and a naive per-packet loop in the same run; one group per stage and
one per backend path. Run with ``python -m pytest benchmarks`` (pytest-benchmark); the
ratios print at the end."""
import os
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import HostStack, Miniport, SaConfig
from ipsecoffload.cli import bench
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath.layout import (COUNTERS, CRYPTO_OP_DTYPE, NB_PLAN_DTYPE, Suite,
                                          WIRE_FRAME_DTYPE)

SIZES = [64, 512, 1400, 9000]
BATCH = 256
CBC = bench.Suite("aes-cbc-128", "hmac-sha256-128")


def test_limit(benchmark, record):
    benchmark.group = "reference"
    aead, nonce, aad = AESGCM(bytes(16)), bytes(12), bytes(8)
    data, out = memoryview(bytearray(1 << 20)), bytearray((1 << 20) + 16)
    record("limit", 0, benchmark, 1, 1 << 20)
    benchmark(aead.encrypt_into, nonce, data, aad, out)


@pytest.mark.parametrize("size", SIZES)
def test_naive(benchmark, record, size):
    benchmark.group = f"size {size}"
    aead, aad = AESGCM(bytes(16)), bytes(8)
    packets = [bytearray(os.urandom(size)) for _ in range(BATCH)]
    outs = [bytearray(size + 16) for _ in range(BATCH)]

    def loop():
        for i, packet in enumerate(packets):
            aead.encrypt_into(i.to_bytes(12, "big"), packet, aad, outs[i])
    record("naive", size, benchmark, BATCH, BATCH * size)
    benchmark(loop)


@pytest.mark.parametrize("size", SIZES)
def test_miniport_send(benchmark, record, size):
    benchmark.group = f"size {size}"
    miniport, frames = bench.prepared_send(size, BATCH)
    record("miniport", size, benchmark, BATCH, BATCH * size)
    benchmark(bench.resend, miniport, frames)


@pytest.mark.parametrize("size", [64, 1400])
def test_cbc_hmac_send_and_naive(benchmark, size):
    """AES-CBC-128 + HMAC-SHA-256-128: the send path, with its own naive loop's rate (a new
    CBC encryptor and one HMAC per packet) from the same run in extra_info."""
    benchmark.group = f"cbc+hmac size {size}"
    miniport, frames = bench.prepared_send(size, BATCH, CBC.encryption, CBC.integrity)
    naive = bench.naive_packets_per_second(size, BATCH, 0.2, CBC)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * size, naive_pps=naive)
    benchmark(bench.resend, miniport, frames)


AH_SUITES = {"ah-hmac-sha256-128": bench.Suite(None, None, "hmac-sha256-128"),
             "aes-gcm-128+ah-hmac-sha256-128": bench.Suite("aes-gcm-128", None,
                                                           "hmac-sha256-128")}


@pytest.mark.parametrize("size", [64, 1400])
@pytest.mark.parametrize("name", list(AH_SUITES))
def test_ah_send_and_naive(benchmark, size, name):
    """AH alone (HMAC-SHA-256-128) and an AH+ESP bundle: the send path, with its own naive
    loop's rate (one HMAC per packet; the GCM call, then the HMAC) in extra_info."""
    suite = AH_SUITES[name]
    benchmark.group = f"{name} size {size}"
    miniport, frames = bench.prepared_send(size, BATCH, suite.encryption, suite.integrity,
                                           suite.ah)
    naive = bench.naive_packets_per_second(size, BATCH, 0.2, suite)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * size, naive_pps=naive)
    benchmark(bench.resend, miniport, frames)


@pytest.mark.parametrize("size", SIZES)
def test_stack_and_miniport(benchmark, record, size):
    """The whole path from plain packets: host stack framing + miniport send."""
    benchmark.group = f"size {size}"
    stack = HostStack(Miniport())
    sa = stack.add_sa(SaConfig(spi=0x2000, encryption="aes-gcm-128", key=bytes(20)))
    packets = [bench.tcp_packet(size)] * BATCH
    record("stack+miniport", size, benchmark, BATCH, BATCH * size)
    benchmark(stack.send, packets, sa)


def test_lso(benchmark):
    benchmark.group = "lso"
    miniport, frames, segments = bench.prepared_lso(bench.DEFAULT_LSO_SIZE)
    benchmark.extra_info.update(packets=segments, bytes=bench.DEFAULT_LSO_SIZE + 40)
    benchmark(bench.resend, miniport, frames)


class _Stages:
    """The send stages of one prebuilt batch, each runnable alone."""

    def __init__(self, size: int, suite: bench.Suite = bench.Suite()):
        self.miniport, self.frames = bench.prepared_send(size, BATCH, suite.encryption,
                                                         suite.integrity)
        self.table = self.miniport.sas.snapshot()
        self.k = self.miniport.kernels
        self.plans = np.zeros(self.frames.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
        n_nbl = len(self.frames)
        self.status = np.zeros(n_nbl, np.uint32)
        self.lso = np.zeros(n_nbl, np.uint64)
        self.counters = np.zeros(COUNTERS, np.int64)
        self.classify()
        self.totals = self.plan()
        out_bytes, n_frames, n_ops, rand_bytes = self.totals
        self.out = np.zeros(out_bytes, np.uint8)
        self.wire = np.zeros(n_frames * WIRE_FRAME_DTYPE.itemsize, np.uint8)
        self.ops = np.zeros(n_ops * CRYPTO_OP_DTYPE.itemsize, np.uint8)
        self.rand = np.frombuffer(os.urandom(rand_bytes), np.uint8)
        self.emit()

    def classify(self):
        self.k.tx_classify(self.frames, self.table.records_bytes, self.miniport.config_bits(),
                           int(self.miniport.icv_space), int(self.miniport.iv_source),
                           self.plans)

    def plan(self):
        return self.k.tx_plan(self.frames, self.table.records_bytes, self.plans, self.status,
                              self.lso, self.counters)

    def emit(self):
        self.k.tx_emit(self.frames, self.table.records_bytes, self.plans, self.rand, self.out,
                       self.wire, self.ops)

    def seal(self, backends):
        self.k.run_op_groups(self.out, self.ops, self.table.keys, backends, "seal")

    def fixup(self):
        self.k.tx_fixup(self.out, self.ops)


class _NullBackend:
    name = "null"

    def seal(self, arena, ops, idx, keys):
        pass


@pytest.mark.parametrize("stage", ["tx_classify", "tx_plan", "tx_emit", "tx_fixup",
                                   "tx_run (null backend)"])
def test_stage(benchmark, stage):
    """One send stage at a time, 64-byte packets (the null-backend row is all the non-crypto
    work of the send path)."""
    benchmark.group = "stages (64 B)"
    stages = _Stages(64)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * 64)
    null = {suite: _NullBackend() for suite in Suite}
    run = {"tx_classify": stages.classify, "tx_plan": stages.plan, "tx_emit": stages.emit,
           "tx_fixup": stages.fixup,
           "tx_run (null backend)": lambda: stages.k.tx_run(
               stages.frames, stages.table, stages.miniport.config_bits(), 0, 0, null,
               os.urandom)}[stage]
    benchmark(run)


def _backend_paths():
    """(id, suite, backends-factory) for every backend path this machine has."""
    from ipsecoffload import _fastpath
    paths = [("reference-gcm", bench.Suite(), lambda: {s: ReferenceBackend() for s in Suite})]
    for name in getattr(_fastpath, "ghash_usable_paths", lambda: ())():
        paths.append((f"gcm-batched-{name}", bench.Suite(), name))
    paths.append(("reference-cbc", CBC, lambda: {s: ReferenceBackend() for s in Suite}))
    if hasattr(_fastpath, "CbcHmacBackend"):
        paths.append(("cbc-hmac", CBC, lambda: {s: _fastpath.CbcHmacBackend() for s in Suite}))
    return paths


@pytest.mark.parametrize("size", [64, 1400])
@pytest.mark.parametrize("path_id,suite,factory", _backend_paths(),
                         ids=[p[0] for p in _backend_paths()])
def test_backend_path(benchmark, monkeypatch, size, path_id, suite, factory):
    """The seal of one batch of ops by one backend path (GHASH paths forced one by one)."""
    from ipsecoffload import _fastpath
    benchmark.group = f"backend paths ({size} B)"
    if isinstance(factory, str):
        monkeypatch.setenv("IPSECOFFLOAD_GHASH", factory)
        _fastpath._ghash_reset_default()
        gcm = _fastpath.GcmBatchedBackend()
        backends = {s: gcm for s in Suite}
    else:
        backends = factory()
    stages = _Stages(size, suite)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * size)
    try:
        benchmark(stages.seal, backends)
    finally:
        if isinstance(factory, str):
            monkeypatch.delenv("IPSECOFFLOAD_GHASH")
            _fastpath._ghash_reset_default()


@pytest.mark.parametrize("threads", [1, 2])
def test_threads(benchmark, threads):
    """Threads sending on their own miniport and SA, 1400-byte packets: compare the two rows'
    packets per second (the aggregate of two threads against one)."""
    benchmark.group = "threads (1400 B)"
    prepared = [bench.prepared_send(1400, BATCH) for _ in range(threads)]
    rounds = 20

    def work(miniport, frames):
        for _ in range(rounds):
            bench.resend(miniport, frames)

    def run():
        workers = [threading.Thread(target=work, args=p) for p in prepared]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    benchmark.extra_info.update(packets=threads * rounds * BATCH,
                                bytes=threads * rounds * BATCH * 1400)
    benchmark(run)
