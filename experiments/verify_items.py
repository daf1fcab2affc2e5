"""Re-score the items of a committed per-item score file and compare with the kept scores.

    python -m experiments.verify_items results/nb201_correlation/items.csv --bench nb201-cifar10 --items 20
    python -m experiments.verify_items results/mq_correlation/items_resnet20.csv --bench mq-resnet20-cifar10 --items all

Every proxy key of the file (a registered name, or ``path#hash`` of a proxy file, whose content must
still hash the same) is scored afresh on the chosen items (``--items N``: a seeded sample of the
file's ids; ``all``: every id) through the library's scoring path, and compared value by value with
the file. Prints one line per proxy (max |difference|, how many differ) and, last, one JSON object;
exits 1 when any score differs by more than ``--tol`` (default 0: bit-identical). The JSON also holds each
proxy's largest relative difference and ``batch_sha256``, the statistics cache's hash of the decoded batch (``--batch``
images, default 64 as in the committed files; the protocol's seed). Two runs with the same hash fed the proxies
the same pixels: what differs between them comes from the numeric environment (CPU kernels, library builds),
not from the images. On one machine, ``ATEN_CPU_CAPABILITY=default`` vs ``avx2`` shows the size of that effect.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import REPO


def _proxy_of(key: str):
    if "#" not in key:
        return key
    path, digest = key.rsplit("#", 1)
    full = REPO / path
    actual = hashlib.sha256(full.read_bytes()).hexdigest()[: len(digest)]
    if actual != digest:
        raise SystemExit(f"error: {path} changed since the scores were kept (hash {actual}, file says {digest})")
    return str(full)


def verify(path: Path, bench: str, items: str, seed: int, jobs: int, table: str | None, batch: int = 64) -> dict:
    kept: dict[str, dict[int, float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            kept.setdefault(row["key"], {})[int(row["id"])] = float(row["score"])
    ids = sorted(set.intersection(*(set(v) for v in kept.values())))
    if items != "all":
        ids = sorted(np.random.default_rng(seed).permutation(ids)[: int(items)].tolist())
    keys = list(kept)
    labels = {key: _proxy_of(key) for key in keys}
    start = time.perf_counter()
    data: dict = {}
    # score exactly these ids: a one-off "all" split of the chosen ids through the evaluator's protocol
    from evoproxy.scoring import resolve_scorers, score_items
    from mqbench.benchmarks import BenchRef
    from primitives.many import batch_hash
    from primitives.workspace import Workspace

    ref, b = BenchRef.resolve(bench, table)
    b.verify()
    workspace = Workspace(ref, b)
    scorers = resolve_scorers(list(labels.values()))
    results = score_items(workspace, ids, scorers, batch, jobs=jobs, desc=f"{len(scorers)} proxies")
    data["seconds"] = time.perf_counter() - start
    out = {"file": str(path), "bench": bench, "items": len(ids), "proxies": {},
           "batch_sha256": batch_hash(*workspace.batch(batch))}
    worst = 0.0
    for key in keys:
        label = labels[key]
        new = np.array([r["scores"][label] for r in results], dtype=float)
        old = np.array([kept[key][i] for i in ids], dtype=float)
        same = (new == old) | (np.isnan(new) & np.isnan(old))
        diff = np.where(same, 0.0, np.abs(new - old))
        diff = np.where(np.isnan(diff), math.inf, diff)
        rel = np.where(same, 0.0, diff / np.maximum(np.abs(old), 1e-300))
        out["proxies"][key] = {"max_abs_diff": float(diff.max()), "max_rel_diff": float(rel.max()),
                               "differ": int((~same).sum())}
        worst = max(worst, float(diff.max()))
        print(f"{key:>60}  max|diff| {diff.max():.3g}  relative {rel.max():.3g}  "
              f"differ {int((~same).sum())}/{len(ids)}")
    out["max_abs_diff"] = worst
    out["seconds"] = round(data["seconds"], 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--bench", required=True)
    p.add_argument("--table", default=None)
    p.add_argument("--items", default="20", help="how many of the file's ids to re-score (seeded), or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--tol", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64, help="statistics batch size the file was scored with")
    args = p.parse_args(argv)
    out = verify(args.file, args.bench, args.items, args.seed, args.jobs, args.table, args.batch)
    print(json.dumps(out))
    return 0 if out["max_abs_diff"] <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
