"""The type stubs of the compiled module (ipsecoffload/_fastpath.pyi) match what it exports:
mypy's stubtest imports ipsecoffload._fastpath and compares every name, signature and enum
member with the stub. A function, enum code or class added to the kernels without its stub
fails here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ipsecoffload

pytest.importorskip("mypy.stubtest")

REPO = Path(ipsecoffload.__file__).resolve().parents[1]


def test_fastpath_stub_matches_the_compiled_module():
    pytest.importorskip("ipsecoffload._fastpath")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ipsecoffload._fastpath",
         # PEP 800 markers are new (mypy 1.18+); the stub does not carry them
         "--ignore-disjoint-bases",
         "--allowlist", str(REPO / "tests" / "stubtest_allowlist.txt"),
         "--mypy-config-file", str(REPO / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
