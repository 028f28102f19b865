"""``ipsecoffload bench --plot FILE.png``: throughput against packet size, from one run.

Three lines per chart, all from the same ``bench.run`` (docs/benchmarks.md): ours (the
miniport), the naive loop (one cipher call per packet) and the raw cipher on 1 MiB (the
limit). matplotlib is an optional dependency (``pip install 'ipsecoffload[plot]'``).
"""
from __future__ import annotations

import os
import platform
from typing import Sequence

from .bench import BenchRow

__all__ = ["machine_description", "plot_rows"]


def machine_description() -> str:
    """CPU model, logical CPUs and the GHASH path: what the figures depend on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from .. import _fastpath
        ghash = _fastpath.ghash_default_path()
    except (ImportError, ValueError):
        ghash = "n/a"
    return f"{model}, {os.cpu_count()} logical CPUs, GHASH path {ghash}"


def plot_rows(rows: Sequence[BenchRow], path: str, machine: str = "") -> None:
    """Write a PNG (or any format matplotlib infers from ``path``) of ``rows``."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("bench --plot needs matplotlib: python -m pip install "
                          "'ipsecoffload[plot]'") from error
    if not rows:
        raise ValueError("no benchmark rows to plot")
    rows = sorted(rows, key=lambda r: r.size)
    sizes = [r.size for r in rows]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(sizes, [r.limit_gbps for r in rows], "k--", label="raw cipher, 1 MiB (limit)")
    axes.plot(sizes, [r.gbps for r in rows], "o-", color="tab:blue", label="ipsecoffload")
    # the naive loop moves the same IP bytes per packet: its Gbit/s is ours / (ours/naive)
    axes.plot(sizes, [r.gbps / r.ratio_naive for r in rows], "s-", color="tab:orange",
              label="naive loop, one call per packet")
    axes.set_xscale("log")
    axes.set_xticks(sizes)
    axes.set_xticklabels([str(s) for s in sizes])
    axes.set_xlabel("TCP payload per super-packet (bytes)" if rows[0].path == "lso"
                    else "IP packet size (bytes)")
    axes.set_ylabel("Gbit/s of IP bytes, one core")
    top = max(max(r.limit_gbps for r in rows), max(r.gbps for r in rows))
    axes.set_ylim(0, top * 1.45)  # room for the legend above the lines
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title(f"{rows[0].path} path, {rows[0].suite}: one run", fontsize=10)
    figure.text(0.01, 0.01, machine or machine_description(), fontsize=7, color="0.35")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    plt.close(figure)
