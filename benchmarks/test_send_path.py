"""Send path over prebuilt frames, batch 256, AES-128-GCM transport over IPv4 (design §8),
with the raw cipher (limit) and a naive per-packet loop in the same run. Run with
``python -m pytest benchmarks`` (pytest-benchmark); the ratios print at the end."""
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload.cli import bench
from ipsecoffload.crypto import JobTable
from ipsecoffload.datapath.layout import NB_PLAN_DTYPE

SIZES = [64, 512, 1400, 9000]
BATCH = 256


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
    benchmark(miniport.send, frames)


@pytest.mark.parametrize("size", SIZES)
def test_stack_and_miniport(benchmark, record, size):
    """The whole path from plain packets: host stack framing + miniport send."""
    benchmark.group = f"size {size}"
    miniport, _ = bench.prepared_send(size, 1)
    from ipsecoffload import HostStack, SaConfig
    stack = HostStack(miniport)
    sa = stack.add_sa(SaConfig(spi=0x2000, encryption="aes-gcm-128", key=bytes(20)))
    packets = [bench.tcp_packet(size)] * BATCH
    record("stack+miniport", size, benchmark, BATCH, BATCH * size)
    benchmark(stack.send, packets, sa)


@pytest.mark.parametrize("stage", ["classify", "emit", "seal"])
def test_stage(benchmark, stage):
    """One pipeline stage at a time, 1400-byte packets."""
    benchmark.group = "stages (1400 B)"
    miniport, frames = bench.prepared_send(1400, BATCH)
    table = miniport.sas.snapshot()
    k = miniport.kernels
    plans = np.zeros(frames.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    status = np.zeros(len(frames), np.uint32)
    args = (frames.arena, frames.nb_off, frames.nb_len, frames.nb_nbl, frames.nb_count(),
            frames.offload_handle, frames.tunnel_handle, frames.next_header, frames.pad_length,
            frames.ah_off4, frames.esp_off4, frames.lso_info, frames.l2_len,
            table.records_bytes, miniport.config_bits(), int(miniport.icv_space), plans, status)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * 1400)
    if stage == "classify":
        benchmark(k.classify, *args)
        return
    k.classify(*args)
    plan = plans.view(NB_PLAN_DTYPE)
    n = len(plan)
    pos = np.concatenate(([0], np.cumsum(plan["out_len"])[:-1])).astype(np.int64)
    idx = np.arange(n, dtype=np.int64)
    out = np.empty(int(plan["out_len"].sum()), np.uint8)
    out_off, out_len = np.empty(n, np.int64), np.empty(n, np.int64)
    out_nbl, jobs = np.empty(n, np.int32), JobTable.empty(n)

    def emit():
        k.emit(frames.arena, frames.nb_off, frames.nb_len, frames.nb_nbl, plans,
               table.records_bytes, int(miniport.iv_source), np.zeros(0, np.uint8), pos, idx,
               idx, out, out_off, out_len, out_nbl, jobs.slot, jobs.esp, jobs.text,
               jobs.text_len, jobs.icv, jobs.seq_hi, jobs.post, jobs.udp, jobs.ip)
    if stage == "emit":
        benchmark(emit)
        return
    emit()
    benchmark(miniport.backend.seal, out, jobs, table.keys)

