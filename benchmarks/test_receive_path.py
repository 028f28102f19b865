"""Receive path over received ESP frames, batch 256, transport over IPv4 (docs/benchmarks.md):
``Miniport.receive`` (verify and decrypt) and ``HostStack.receive`` (window and decapsulation
too), with a naive loop of one ``decrypt`` per packet from the same run in extra_info."""
import pytest

from ipsecoffload import HostStack, Miniport
from ipsecoffload.cli import bench
from ipsecoffload.datapath.batch import PacketBatch

SIZES = [64, 512, 1400, 9000]
BATCH = 256
SUITES = {"aes-gcm-128": bench.Suite(), "cbc+hmac": bench.Suite("aes-cbc-128", "hmac-sha256-128")}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("suite", list(SUITES))
def test_miniport_receive(benchmark, suite, size):
    benchmark.group = f"receive {suite} size {size}"
    miniport, frames = bench.prepared_receive(size, BATCH, SUITES[suite])
    naive = bench.naive_receive_packets_per_second(size, BATCH, 0.1, SUITES[suite])
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * size, naive_pps=naive)
    result = benchmark(miniport.receive, frames)
    assert result.reason_counts() == {"OK": BATCH}


@pytest.mark.parametrize("size", [64, 1400])
def test_host_stack_receive(benchmark, size):
    """The NIC's receive plus the stack's window and decapsulation (a window of 0: the same
    frames are received again and again)."""
    benchmark.group = f"receive aes-gcm-128 size {size}"
    suite = SUITES["aes-gcm-128"]
    sender = HostStack(Miniport())
    config = suite.sa_config()
    wire = sender.send([bench.tcp_packet(size)] * BATCH, sender.add_sa(config)).wire
    stack = HostStack(Miniport())
    stack.add_inbound_sa(config, replay_window=0, versions=(False,))
    frames = PacketBatch.from_frames(wire.frames(), l2_len=14)
    benchmark.extra_info.update(packets=BATCH, bytes=BATCH * size)
    got = benchmark(stack.receive, frames)
    assert got.counts() == {"DECAP": BATCH}
