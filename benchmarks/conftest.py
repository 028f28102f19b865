"""Collects each benchmark's mean time and prints the ratios of docs/benchmarks.md at the end
of the run."""
import pytest

RESULTS: dict = {}


@pytest.fixture
def record():
    """record(kind, size, benchmark, packets, bytes_in): keep the figures for the summary."""
    def _record(kind, size, benchmark, packets, bytes_in):
        benchmark.extra_info.update(packets=packets, bytes=bytes_in)
        RESULTS[(kind, size)] = (benchmark, packets, bytes_in)
    return _record


def _rate(entry):
    benchmark, packets, bytes_in = entry
    mean = benchmark.stats.stats.mean
    return packets / mean, bytes_in * 8 / mean / 1e9


def pytest_terminal_summary(terminalreporter):
    limit = RESULTS.get(("limit", 0))
    if not limit or not hasattr(limit[0], "stats") or limit[0].stats is None:
        return
    _, limit_gbps = _rate(limit)
    write = terminalreporter.write_line
    write("")
    write(f"ratios from this run (limit = raw AES-128-GCM on 1 MiB: {limit_gbps:.2f} Gbit/s)")
    write(f"{'path':<14}{'size':>6}{'Mpps':>9}{'Gbit/s':>9}{'ours/limit':>12}{'ours/naive':>12}")
    for (kind, size), entry in sorted(RESULTS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if kind in ("limit", "naive") or entry[0].stats is None:
            continue
        pps, gbps = _rate(entry)
        naive = RESULTS.get(("naive", size))
        ratio_naive = f"{pps / _rate(naive)[0]:.3f}" if naive and naive[0].stats else "-"
        write(f"{kind:<14}{size:>6}{pps / 1e6:>9.3f}{gbps:>9.2f}{gbps / limit_gbps:>12.3f}"
              f"{ratio_naive:>12}")
