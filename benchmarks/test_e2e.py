"""End to end (docs/benchmarks.md, "End to end"): ``encrypt`` on a generated raw-IP
capture of TCP packets, pcap reading and writing included, in process (net of interpreter
start-up), at 64 and 1400 B and for 64000-byte super-packets cut at MSS 1448, against the
naive loop of one ``encrypt_into`` per packet timed in the same run (group ``e2e``); and
the 1400 B capture spread over 8 SAs with 1 and 2 workers (group ``e2e-workers``: the
ratio of the two rows is the --workers figure of docs/benchmarks.md).
``ipsecoffload bench --path e2e [--sas 8 --workers 2]`` gives the same rows from the command
line."""
import pytest

from ipsecoffload.cli.bench import Suite, naive_packets_per_second, prepared_e2e

SIZES = (64, 1400, 64000)
MSS = 1448


@pytest.mark.parametrize("size", SIZES)
def test_e2e_encrypt(benchmark, record, size):
    benchmark.group = "e2e"
    work, units, ip_bytes, _, cleanup = prepared_e2e(size, MSS, Suite())
    try:
        benchmark.pedantic(work, setup=work.tidy, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        cleanup()
    record("e2e", size, benchmark, units, ip_bytes)


@pytest.mark.parametrize("size", (64, 1400, MSS + 40))
def test_e2e_naive_reference(benchmark, size):
    benchmark.group = "e2e"
    rate = benchmark.pedantic(naive_packets_per_second, args=(size, 256, 0.05), rounds=3,
                              iterations=1)
    benchmark.extra_info.update(naive_pps=rate)


@pytest.mark.parametrize("workers", (1, 2))
def test_e2e_encrypt_8_sas(benchmark, record, workers):
    benchmark.group = "e2e-workers"
    work, units, ip_bytes, _, cleanup = prepared_e2e(1400, MSS, Suite(), sas=8,
                                                     workers=workers)
    try:
        benchmark.pedantic(work, setup=work.tidy, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        cleanup()
    record(f"e2e-8sa-w{workers}", 1400, benchmark, units, ip_bytes)
