"""Long stages (a 1B LLM's export, the greedy generation check) show that they are running before they end."""

from __future__ import annotations

import io

from rich.console import Console

from edgeq.reporting.tables import StageProgress


def test_a_log_names_the_running_stage_before_it_ends():
    buf = io.StringIO()
    progress = StageProgress(Console(file=buf, force_terminal=False, width=100))
    with progress.stage("generate check"):
        assert buf.getvalue() == "start generate check\n"  # seen while the stage runs
    assert buf.getvalue().splitlines()[-1].startswith("done generate check (")
    calib = StageProgress(Console(file=buf, force_terminal=False, width=100), total_samples=4)
    with calib.stage("quantize (int4)"):  # the calibration bar draws nothing in a log: the line still comes
        assert buf.getvalue().splitlines()[-1] == "start quantize (int4)"


def test_a_terminal_shows_a_spinner_that_the_done_line_replaces():
    buf = io.StringIO()
    progress = StageProgress(Console(file=buf, force_terminal=True, width=100))
    with progress.stage("export (hf)"):
        pass
    assert "export (hf) ..." in buf.getvalue()
    assert "done" in buf.getvalue().rsplit("export (hf) ...", 1)[1]
