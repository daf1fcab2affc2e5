"""Fuzzing the proxy language: no random tree of either structure crashes the screening."""
from __future__ import annotations

import json

import pytest

from experiments.tools import fuzz
from evoproxy.evolution.screening import REASONS
from primitives import PRIMITIVES


@pytest.fixture(scope="module")
def stats():
    return fuzz.synthetic_stats(seed=0)


@pytest.mark.parametrize("structure", ["emq", "tree"])
def test_thousand_random_trees_never_crash(structure, stats):
    report = fuzz.fuzz(stats, list(PRIMITIVES), structure, 1000, seed=1)
    assert report.crash_count == 0, report.crashes
    assert sum(report.outcomes.values()) == 1000
    assert set(report.outcomes) <= {"valid", *REASONS}
    # the synthetic networks reach the main outcomes (the last one has a 520-row classifier: "size")
    assert {"valid", "shape", "size"} <= set(report.outcomes)
    assert report.outcomes["valid"] > 300
    assert {"random", "mutation", "crossover"} == set(report.sources)


def test_cli_reports_counts_as_json(capsys):
    assert fuzz.main(["--structure", "tree", "--trees", "100", "--quiet", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["trees"] == 100 and summary["crashes"] == 0
    assert sum(summary["outcomes"].values()) == 100
    assert any(line.strip().startswith("crashes") for line in out)
