"""The example specs reproduce the built-in benchmarks exactly: per-item scores on the same 50 items.

    EVOPROXY_DATA=... python examples/benchmarks/check_identity.py [nb201] [mq]

Each pair runs in a fresh statistics cache, and a spec's network keys differ from the built-in's,
so neither side reads the other's statistics. Prints one JSON line per (pair, proxy); exits 1 when
any per-item score differs.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
PAIRS = {
    "nb201": ("examples/benchmarks/nb201.toml", "nb201-cifar10",
              ["synflow", "results/nb201_correlation/runs/seed0/best.json"]),
    "mq": ("examples/benchmarks/resnet32_mq.toml", "mq-resnet32-cifar10",
           ["hawq_v1", "results/mq_correlation/runs/seed0/best.json"]),
}


def main(which: list[str]) -> int:
    os.environ["EVOPROXY_CACHE"] = tempfile.mkdtemp(prefix="evoproxy-identity-")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from evoproxy.evaluation import proxy_reports

    worst = 0.0
    for key in which or list(PAIRS):
        spec, builtin, proxies = PAIRS[key]
        runs = {}
        for bench in (builtin, spec):
            items, t0 = {}, time.perf_counter()
            reports = proxy_reports(bench, proxies, samples=50, seed=1, items=items, progress=False)
            runs[bench] = (items, reports, time.perf_counter() - t0)
        (a, ra, ta), (b, rb, tb) = runs[builtin], runs[spec]
        assert a["ids"] == b["ids"], "different samples"
        for p in proxies:
            x = np.array([r["scores"][p] for r in a["results"]])
            y = np.array([r["scores"][p] for r in b["results"]])
            diff = float(np.max(np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))))
            worst = max(worst, diff)
            print(json.dumps({"pair": key, "proxy": p, "n": len(x), "max_abs_diff": diff,
                              "spearman": [ra[p]["spearman"], rb[p]["spearman"]],
                              "truth_equal": bool((a["truth"] == b["truth"]).all()),
                              "size_equal": bool((a["size"] == b["size"]).all()),
                              "wall_s": {"builtin": round(ta, 1), "spec": round(tb, 1)}}), flush=True)
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
