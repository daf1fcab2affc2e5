"""Search cost: wall time and peak memory of primitive extraction vs evolution vs evaluation.

    python -m experiments.search_cost [--jobs 2] [--eval-samples 200]

For each benchmark, three phases run as separate child processes (so each one's peak resident
memory is measured on its own, by ``os.wait4``; it is the maximum over the process and the worker
processes it reaped) with a fresh, private primitives cache:

1. ``extract`` — the search samples' primitives (``searchdata.load_samples``), written to the cache;
2. ``evolve`` — ``evoproxy search`` with those primitives already cached (loading them included);
3. ``evaluate`` — ``evoproxy evaluate`` of the best proxy on ``--eval-samples`` holdout items.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.common import REPO, announce, log, results_dir, write_report

BENCHES = {
    "nb201-cifar10": dict(samples=100, population=64, generations=40, fitness="spearman"),
    "mq-resnet20-cifar10": dict(samples=50, population=32, generations=20, fitness="spearman_partial"),
}
COLUMNS = ["bench", "phase", "wall_s", "peak_rss_mb", "what"]
HEADERS = {"wall_s": "wall s", "peak_rss_mb": "peak RSS (MB)"}


def _measure(cmd: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1:]}")
    return wall, usage.ru_maxrss / 1024.0


def _extract_only(bench: str, out: str, settings: dict, jobs: int) -> None:
    from evoproxy.evolution import Search, SearchConfig

    search = Search(SearchConfig(bench=bench, out=out, jobs=jobs, progress=False, **settings))
    search._prepare()  # samples the search split and extracts (and caches) their primitives


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--benches", default=",".join(BENCHES))
    p.add_argument("--_extract", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._extract:
        _extract_only(args._extract[0], args._extract[1], BENCHES[args._extract[0]], args.jobs)
        return 0
    out = results_dir("search_cost")
    rows = []
    for bench in [b for b in args.benches.split(",") if b]:
        s = BENCHES[bench]
        with tempfile.TemporaryDirectory(prefix="evoproxy-cost-") as tmp:
            env = {**os.environ, "EVOPROXY_CACHE": tmp, "PYTHONPATH": str(REPO)}
            run = Path(tmp) / "run"
            log(f"{bench}: extract")
            wall, rss = _measure([sys.executable, "-m", "experiments.search_cost", "--jobs", str(args.jobs),
                                  "--_extract", bench, str(run)], env)
            rows.append({"bench": bench, "phase": "extract", "wall_s": wall, "peak_rss_mb": rss,
                         "what": f"primitives of {s['samples']} search items (all non-Hessian primitives"
                                 f"{'; FP Hessian with 8 probes once' if bench.startswith('mq') else ''})"})
            log(f"{bench}: evolve")
            cmd = [sys.executable, "-m", "evoproxy", "search", "--bench", bench, "--out", str(run), "--quiet",
                   "--jobs", str(args.jobs), "--samples", str(s["samples"]), "--population", str(s["population"]),
                   "--generations", str(s["generations"]), "--fitness", s["fitness"]]
            wall, rss = _measure(cmd, env)
            rows.append({"bench": bench, "phase": "evolve", "wall_s": wall, "peak_rss_mb": rss,
                         "what": f"population {s['population']}, {s['generations']} generations on cached primitives"})
            log(f"{bench}: evaluate")
            n = args.eval_samples if bench.startswith("nb201") else None
            cmd = [sys.executable, "-m", "evoproxy", "evaluate", "--bench", bench, "--proxy", str(run / "best.json"),
                   "--jobs", str(args.jobs), "--json"] + (["--samples", str(n)] if n else ["--samples", "454"])
            wall, rss = _measure(cmd, env)
            rows.append({"bench": bench, "phase": "evaluate", "wall_s": wall, "peak_rss_mb": rss,
                         "what": f"best proxy on {n or 454} holdout items (primitives it needs, per item)"})
    caption = (f"Search cost on this 2-core machine, --jobs {args.jobs}, batch 64, one child process per phase "
               f"with a fresh primitives cache; peak RSS from os.wait4 (max over the process and its reaped workers).")
    announce(*write_report(out, "table", rows, COLUMNS, caption, HEADERS, digits=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
