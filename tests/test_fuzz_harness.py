"""The fuzz and stress harness (python -m ipsecoffload.fuzz) runs clean for a small budget,
and it does find a fault when there is one."""
import numpy as np

from ipsecoffload import fuzz


def test_a_short_run_has_no_findings(capsys):
    assert fuzz.main(["--frames", "1500", "--seed", "11", "--twin-every", "4",
                      "--stress", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith("fuzz: seed 11") and line.endswith("findings 0")


def test_it_reports_a_broken_send(monkeypatch, capsys):
    original = fuzz.Miniport.send

    def corrupt(self, frames):
        result = original(self, frames)
        if result.wire.num_buffers and self.kernels.__name__.endswith("_fastpath"):
            result.wire.arena[-1] ^= 1  # one ICV bit
        return result
    monkeypatch.setattr(fuzz.Miniport, "send", corrupt)
    assert fuzz.main(["--frames", "300", "--seed", "2", "--twin-every", "1"]) == 1
    out = capsys.readouterr().out
    assert "compiled send != twin" in out or "do not verify" in out
    assert np.__name__  # numpy stays importable (the harness's only dependency besides ours)


def test_the_stress_does_not_mistake_a_handle_issued_again_for_a_stale_one(monkeypatch):
    """G27 (docs/spec-gaps.md): a handle comes back after MAX_SERIAL more ADDs. With the serial
    made tiny, the churn threads issue deleted handles again within the second: a send that
    names such a handle reaches a live SA, which the stress must not count as a stale handle
    used (it did, rarely, in long runs); a handle that stays deleted must still fail."""
    from ipsecoffload.control import satable
    monkeypatch.setattr(satable, "MAX_SERIAL", 3)
    assert fuzz.stress(1.0, 5) == []
