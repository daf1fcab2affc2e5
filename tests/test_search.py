"""The search CLI end to end on a tiny NAS-Bench-201 table: outputs, --jobs invariance, kill -9 + --resume."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evoproxy.cli import main

ROOT = Path(__file__).resolve().parent.parent


ARGS = ["--bench", "nb201-cifar10", "--samples", "8", "--population", "6", "--generations", "3",
        "--batch", "8", "--seed", "3", "--quiet"]


def _log_without_seconds(run: Path) -> list[list[str]]:
    rows = list(csv.reader(open(run / "log.csv")))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


def test_search_writes_the_run_folder_and_best_scores_on_the_holdout(search_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", *ARGS, "--out", str(run)]) == 0
    assert "best:" in capsys.readouterr().out
    for name in ("config.json", "log.csv", "hall_of_fame.json", "best.json", "checkpoint.json"):
        assert (run / name).exists(), name
    best = json.loads((run / "best.json").read_text())
    assert best["format"] == "evoproxy.proxy/1" and best["formula"] and best["search"]["bench"] == "nb201-cifar10"
    config = json.loads((run / "config.json").read_text())
    from mqbench.benchmarks import get_benchmark

    search_split, _ = get_benchmark("nb201-cifar10").split(0)
    assert set(config["search_ids"]) <= set(search_split)  # search samples only from the search split
    log = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["generation"]) for r in log] == [0, 1, 2, 3]
    for key in ("best_fitness", "median_fitness", "valid_rate", "unique_formulas", "seconds", "rejected_shape"):
        assert key in log[0]
    assert float(log[-1]["best_fitness"]) >= float(log[0]["best_fitness"])
    assert float(log[-1]["best_fitness"]) == pytest.approx(best["search"]["fitness_value"], abs=1e-6)
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", str(run / "best.json"), "--samples", "10",
                 "--batch", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["n"] + rep["failed"] == 10 and rep["spearman"] is not None
    # the run folder is protected, and a resume must use the same settings
    assert main(["search", *ARGS, "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["search", *[a if a != "3" else "4" for a in ARGS], "--out", str(run), "--resume"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_jobs_do_not_change_the_run(search_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["search", *ARGS, "--out", str(a), "--structure", "tree"]) == 0
    assert main(["search", *ARGS, "--out", str(b), "--structure", "tree", "--jobs", "2"]) == 0
    assert (a / "best.json").read_text() == (b / "best.json").read_text()
    assert _log_without_seconds(a) == _log_without_seconds(b)


def test_kill_9_then_resume_equals_an_uninterrupted_run(search_root, tmp_path):
    reference = tmp_path / "ref"
    args = [*ARGS[:5], "5", *ARGS[6:]]  # 5 generations
    assert main(["search", *args, "--out", str(reference)]) == 0
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "evoproxy", "search", *args, "--out", str(run)]
    for wait_for in (1, 3):  # kill after the checkpoint of generation 1, then again after 3
        proc = subprocess.Popen(cmd + (["--resume"] if wait_for > 1 else []), env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                done = json.loads((run / "checkpoint.json").read_text())["generation"]
            except (OSError, ValueError, KeyError):
                done = -1
            if done >= wait_for:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["search", *args, "--out", str(run), "--resume"]) == 0
    assert (run / "best.json").read_text() == (reference / "best.json").read_text()
    assert _log_without_seconds(run) == _log_without_seconds(reference)
