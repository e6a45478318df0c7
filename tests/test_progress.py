"""What a waiting train_experts shows: step / total, loss, tokens/s and an ETA per running expert, from the
run's train_log.jsonl; redrawn in place on a terminal, one line per interval in a log."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

from xlbtm.launch.wait import _Progress
from xlbtm.train.progress import TrainProgress, format_duration, last_train_record


def _expert(run_dir: Path, cluster: int, max_steps: int):
    return SimpleNamespace(cluster=cluster, run_dir=run_dir, cfg=SimpleNamespace(max_steps=max_steps))


def _log(run_dir: Path, *records):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train_log.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_progress_line_reads_the_newest_train_record_and_estimates_from_watched_steps(tmp_path):
    run = tmp_path / "demo.cluster3"
    now = [100.0]
    p = TrainProgress([_expert(run, 3, 200)], clock=lambda: now[0])
    assert "cluster 3: starting" in p(0)
    _log(run, {"kind": "valid", "step": 0, "loss": 9.0})
    assert "starting" in p(0)  # a validation record is not a training step
    _log(run, {"kind": "train", "step": 50, "loss": 7.25, "tokens_per_s": 1234.5})
    line = p(0)
    assert line.startswith("cluster 3: step 50/200 [#####---------------] 25%")
    assert "loss 7.250" in line and "1,234 tok/s" in line and "ETA ?" in line  # no rate seen yet
    now[0] = 130.0  # 30 s later the run is at step 80: 1 step/s, 120 steps to go
    _log(run, {"kind": "train", "step": 80, "loss": 6.5, "tokens_per_s": 1300.0}, {"kind": "valid", "step": 80})
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line being written right now
    line = p(0)
    assert "step 80/200" in line and "loss 6.500" in line and "ETA 2m00s" in line
    assert last_train_record(tmp_path / "nowhere") is None
    assert [format_duration(s) for s in (5, 125, 7300)] == ["5s", "2m05s", "2h01m"]


def test_terminal_redraws_in_place_and_a_log_gets_lines(tmp_path, caplog, monkeypatch):
    lines = {0: "cluster 0: step 1/9", 1: "cluster 1: step 2/9"}

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    pr = _Progress(lines.get, "train_experts", stream=tty)
    pr.show([0, 1])
    lines[0] = "cluster 0: step 5/9"
    pr.show([0, 1])
    out = tty.getvalue()
    assert out.count("cluster 1: step 2/9\n") == 2 and "\x1b[2F\x1b[J" in out  # two lines, redrawn over
    assert out.endswith("cluster 0: step 5/9\ncluster 1: step 2/9\n")
    pr.clear()
    assert tty.getvalue().endswith("\x1b[2F\x1b[J") and pr.drawn == 0  # erased before a log line is written
    monkeypatch.setenv("XLBTM_PROGRESS_EVERY_S", "3600")
    plain = _Progress(lines.get, "train_experts", stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="xlbtm"):
        plain.show([0, 1])
        plain.show([0, 1])  # within the interval: nothing more
    got = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert got == ["train_experts: cluster 0: step 5/9", "train_experts: cluster 1: step 2/9"]
