"""Multi-fidelity scoring of the search's children (evoproxy.evolution.racing) and the margin replay of experiments.race_margins."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from evoproxy.cli import main
from evoproxy.evolution.racing import rung_ends

# 8 samples (the tiny table's whole search split), screening on 2, one rung at 4 with margin 0: children below the
# population's median (the default entry quantile) on half the samples are rejected early
ARGS = ["--bench", "nb201-cifar10", "--samples", "8", "--population", "8", "--generations", "3", "--batch", "8",
        "--seed", "3", "--quiet", "--screen-samples", "2", "--rungs", "0.5", "--margins", "0"]


def _rows(path):
    return list(csv.DictReader(open(path)))


def _decisions(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(run / "log.csv")]


def test_rung_ends():
    assert rung_ends(100, 8, [0.1, 0.25, 0.5]) == (10, 25, 50)
    assert rung_ends(100, 8, [0.05, 0.08, 0.5]) == (50,)  # at or below screening: dropped
    assert rung_ends(8, 8, [0.25, 0.5]) == ()  # too few samples for a rung
    assert rung_ends(50, 8, [0.2, 0.21, 1.0]) == (10,)  # repeats and the full count dropped


def test_multi_fidelity_search(search_root, tmp_path):
    runs = {}
    for name, extra in (("fast", []), ("fast_jobs2", ["--jobs", "2"]), ("audit", ["--audit"]),
                        ("full", ["--no-multi-fidelity"])):
        runs[name] = tmp_path / name
        assert main(["search", *ARGS, *extra, "--out", str(runs[name])]) == 0

    # children rejected early, counted in the log (the log without multi-fidelity keeps its old columns)
    log = _rows(runs["fast"] / "log.csv")
    for key in ("early_rejected", "full_fidelity", "below_population"):
        assert key in log[0]
    assert int(log[0]["early_rejected"]) == 0  # generation 0 is random: no threshold
    assert sum(int(r["early_rejected"]) for r in log) > 0
    assert "early_rejected" not in _rows(runs["full"] / "log.csv")[0]
    config = json.loads((runs["fast"] / "config.json").read_text())
    assert config["multi_fidelity"] is True and config["rungs"] == [0.5] and config["margins"] == [0.0]

    # --jobs and --audit do not change a decision
    assert _decisions(runs["fast"]) == _decisions(runs["fast_jobs2"])
    assert _decisions(runs["fast"]) == _decisions(runs["audit"])
    assert (runs["fast"] / "best.json").read_text() == (runs["audit"] / "best.json").read_text()
    assert not (runs["fast"] / "children.csv").exists()

    # the audit records every child at the rung and at full fidelity
    children = _rows(runs["audit"] / "children.csv")
    early = [r for r in children if r["decision"] == "early"]
    assert early and len(early) == sum(int(r["early_rejected"]) for r in _rows(runs["audit"] / "log.csv"))
    for r in children:
        assert r["full_fitness"] not in ("", "nan")  # audited: every child scored on every sample
        below = not float(r["fitness_at_4"]) >= float(r["threshold"])
        assert (r["decision"] == "early") == below
        assert r["early_rung"] == ("4" if below else "")
    assert all(r["threshold"] == "-inf" for r in children if r["generation"] == "0")

    # every member of a later population reaches the parents' median (elites and kept parents are above it): the
    # threshold never falls, and the last population is at or above the last threshold
    thresholds = {}
    for r in children:
        if r["generation"] != "0":
            thresholds.setdefault(int(r["generation"]), float(r["threshold"]))
    assert len(thresholds) == 3 and list(thresholds.values()) == sorted(thresholds.values())
    ckpt = json.loads((runs["audit"] / "checkpoint.json").read_text())
    assert len(ckpt["population"]) == 8
    assert min(i["fitness"] for i in ckpt["population"]) >= thresholds[3]


def test_rungs_and_margins_are_validated(tmp_path, capsys):
    for bad in (["--rungs", "0.5,0.25", "--margins", "0,0"], ["--rungs", "0.5", "--margins", "0,0"],
                ["--rungs", "1.5", "--margins", "0"], ["--rungs", "0.5", "--margins", "-1"]):
        assert main(["search", *ARGS[:-4], *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("--rungs" in err[0] or "--margins" in err[0])


def test_margin_replay_counts_wrong_rejections(tmp_path):
    from experiments.race_margins import choose, merge, replay

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"samples": 100, "screen_samples": 8}))
    rows = [  # threshold, fitness at 20, at 50, full
        (0.5, 0.1, 0.2, 0.3),  # hopeless: rejected at 20 by any margin below 0.4
        (0.5, 0.45, 0.6, 0.7),  # enters; rejected at 20 only with margin < 0.05
        (0.5, 0.7, 0.3, 0.4),  # falls at 50
        (-math.inf, 0.0, 0.0, 0.1),  # no threshold: dropped
    ]
    with open(run / "children.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generation", "key", "threshold", "full_fitness", "decision", "early_rung", "fitness_at_20",
                    "fitness_at_50"])
        for i, (th, a, b, full) in enumerate(rows):
            w.writerow([1, f"k{i}", th, full, "full", "", a, b])
    cols, ends = merge([run])
    assert ends == [20, 50] and len(cols["full"]) == 3
    r = replay(cols, (20,), (0.0,))
    assert (r["early"], r["wrong"]) == (2, 1) and r["error"] == pytest.approx(0.5)
    assert r["work"] == pytest.approx((20 + 20 + 100) / 300)
    r = replay(cols, (20, 50), (0.1, 0.1))
    assert (r["early"], r["wrong"]) == (2, 0)  # the hopeless one at 20, the falling one at 50
    best = choose(cols, ends, 0.0)
    assert best[0]["choose"]["wrong"] == 0 and best[0]["choose"]["early"] == 2
    assert np.isclose(best[0]["choose"]["work"], (20 + 50 + 100) / 300)


def test_an_early_rejection_holds_only_at_a_threshold_as_high():
    from evoproxy.evolution.racing import _stale

    early = {"reason": "early", "rung": 4, "estimate": 0.1, "threshold": 0.6}
    assert not _stale(early, 0.6) and not _stale(early, 0.7)
    assert _stale(early, 0.5)  # a lower threshold (a restarted island, another island): raced again
    assert not _stale({"fitness": 0.3, "orientation": 1, "scores": []}, -math.inf)
    assert not _stale({"reason": "shape"}, -math.inf)
