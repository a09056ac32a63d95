"""Long stages (a 1B LLM's export, the greedy generation check) show that they are running before they end."""

from __future__ import annotations

import io
import time

from rich.console import Console

from edgeq.reporting.tables import StageProgress


def _wait_for(buf, line, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and line not in buf.getvalue().splitlines():
        time.sleep(0.01)
    return buf.getvalue().splitlines()


def test_a_log_names_the_running_stage_before_it_ends():
    buf = io.StringIO()
    progress = StageProgress(Console(file=buf, force_terminal=False, width=100), start_after=0.05)
    with progress.stage("generate check"):
        assert _wait_for(buf, "start generate check") == ["start generate check"]  # seen while the stage runs
    assert buf.getvalue().splitlines()[-1].startswith("done generate check (")
    calib = StageProgress(Console(file=buf, force_terminal=False, width=100), total_samples=4, start_after=0.05)
    with calib.stage("quantize (int4)"):  # the calibration bar draws nothing in a log: the line still comes
        assert _wait_for(buf, "start quantize (int4)")[-1] == "start quantize (int4)"


def test_a_stage_that_fails_at_once_prints_no_start_line():
    """Bad input refused in the first stage stays one line: no 'start' line before the error."""
    buf = io.StringIO()
    progress = StageProgress(Console(file=buf, force_terminal=False, width=100), start_after=0.5)
    try:
        with progress.stage("export (factory)"):
            raise ValueError("refused")
    except ValueError:
        pass
    time.sleep(0.8)  # past the delay: the cancelled line never comes
    assert "start" not in buf.getvalue()


def test_a_terminal_shows_a_spinner_that_the_done_line_replaces():
    buf = io.StringIO()
    progress = StageProgress(Console(file=buf, force_terminal=True, width=100))
    with progress.stage("export (hf)"):
        pass
    assert "export (hf) ..." in buf.getvalue()
    assert "done" in buf.getvalue().rsplit("export (hf) ...", 1)[1]
