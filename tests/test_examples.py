"""Every program in examples/ runs to completion (each checks its own results with asserts),
so the examples cannot rot; CI also type-checks them with mypy (pyproject.toml)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ipsecoffload

REPO = Path(ipsecoffload.__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"scapy_roundtrip.py", "pcap_convert.py", "ndis_driver_test.py", "lso.py"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()
