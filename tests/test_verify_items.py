"""experiments/verify_items.py: re-scoring a per-item file, exact and relative differences, the batch hash."""
from __future__ import annotations

import csv
import json
import re

import pytest

from experiments.verify_items import main


def _write_items(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("key", "id", "score", "error", "seconds"))
        w.writerows((key, i, repr(score), "", 0.0) for key, i, score in rows)


def test_rescoring_matches_and_reports_differences(search_root, tmp_path, capsys):
    from evoproxy.scoring import resolve_scorers, score_items
    from mqbench.benchmarks import BenchRef, get_benchmark
    from primitives.workspace import Workspace

    ids = get_benchmark("nb201-cifar10").sample(3, 0, "all")
    ref, bench = BenchRef.resolve("nb201-cifar10")
    names = ["params", "grad_norm"]
    results = score_items(Workspace(ref, bench), ids, resolve_scorers(names), 10, progress=False)
    rows = [(n, i, r["scores"][n]) for n in names for i, r in zip(ids, results)]
    path = tmp_path / "items.csv"
    _write_items(path, rows)
    args = [str(path), "--bench", "nb201-cifar10", "--items", "all", "--jobs", "1", "--batch", "10"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["max_abs_diff"] == 0 and first["items"] == 3
    assert all(p["max_rel_diff"] == 0 and p["differ"] == 0 for p in first["proxies"].values())
    assert re.fullmatch(r"[0-9a-f]{64}", first["batch_sha256"])

    moved = [(n, i, s * (1 + 1e-6) if (n, i) == ("grad_norm", ids[1]) else s) for n, i, s in rows]
    _write_items(path, moved)
    assert main(args) == 1
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    grad = second["proxies"]["grad_norm"]
    assert grad["differ"] == 1 and grad["max_rel_diff"] == pytest.approx(1e-6, rel=1e-3)
    assert second["proxies"]["params"]["differ"] == 0
    assert second["batch_sha256"] == first["batch_sha256"]
    assert main(args + ["--tol", "1.0"]) == 0
