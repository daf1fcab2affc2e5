"""The search-acceptance runs: the exact CLI commands a user types, 5 seeds, each committed as it finishes.

    python -m experiments.search_acceptance [--benches nb201,mq] [--seeds 0-4] [--extra "--sampling stratified"]

NB201, per seed S:
    evoproxy search --bench nb201-cifar10 --samples 100 --time-budget 600 --jobs 2 --seed S --out RUN --quiet
    evoproxy evaluate --bench nb201-cifar10 --proxy RUN/best.json --samples 1000 --seed 1 --jobs 2 --json
MQ ResNet-20 W{2,3,4}A8, per seed S:
    evoproxy search --bench mq-resnet20-cifar10 --samples 50 --time-budget 300 --fitness spearman_partial --jobs 2
                    --seed S --out RUN --quiet
    evoproxy evaluate --bench mq-resnet20-cifar10 --proxy RUN/best.json --samples 454 --seed 0 --jobs 2 --json
    evoproxy evaluate --bench mq-resnet32-cifar10 --proxy RUN/best.json --split all --samples N32 --jobs 2 --json
(``--extra`` is appended to every search command; say so in the caption.) Each run folder
``results/search_acceptance/runs/<bench>-s<S>/`` keeps the search outputs (run.json: elapsed seconds, share of
the budget used, why it stopped), ``holdout.json`` (and ``resnet32.json``), ``wall.json`` (each command's wall
time); a run with ``holdout.json`` is skipped. ``table.md`` / ``table.csv`` are rewritten after every run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

from experiments.common import dump_json, log, mean_std, parse_seeds, results_dir, write_report

BENCHES = {
    "nb201": dict(search="--bench nb201-cifar10 --samples 100 --time-budget 600",
                  evaluate="--bench nb201-cifar10 --samples 1000 --seed 1", target=(0.92, 0.93, None)),
    "mq": dict(search="--bench mq-resnet20-cifar10 --samples 50 --time-budget 300 --fitness spearman_partial",
               evaluate="--bench mq-resnet20-cifar10 --samples 454 --seed 0", target=(0.93, None, 0.85)),
}
COLUMNS = ["bench", "seed", "holdout_spearman", "holdout_partial", "resnet32_spearman", "search_fitness",
           "validation_fitness", "generations", "population", "budget_used", "stopped", "search_wall_s", "formula"]


def _cli(args: str, stdout=None) -> float:
    cmd = [sys.executable, "-m", "evoproxy", *shlex.split(args)]
    log("$ evoproxy " + args)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=stdout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: command failed ({done.returncode}): evoproxy {args}")
    return time.perf_counter() - t0


def _rows_r32() -> int:
    from mqbench.bench.benchmarks import get_benchmark

    return len(get_benchmark("mq-resnet32-cifar10").ids)


def run_one(short: str, seed: int, jobs: int, extra: str) -> None:
    out = results_dir("search_acceptance") / "runs" / f"{short}-s{seed}"
    if (out / "holdout.json").exists():
        return
    b = BENCHES[short]
    wall = {}
    resume = " --resume" if (out / "checkpoint.json").exists() else ""
    wall["search"] = _cli(f"search {b['search']} --jobs {jobs} --seed {seed} --out {out} --quiet{resume} {extra}".strip())
    targets = [("holdout.json", f"evaluate {b['evaluate']} --proxy {out / 'best.json'} --jobs {jobs} --json")]
    if short == "mq":
        targets.append(("resnet32.json", f"evaluate --bench mq-resnet32-cifar10 --proxy {out / 'best.json'} --split all "
                                          f"--samples {_rows_r32()} --jobs {jobs} --json"))
    for name, args in reversed(targets):  # holdout.json last: it marks the run finished
        part = out / f".{name}.part"
        with open(part, "w") as fh:
            wall[name] = _cli(args, stdout=fh)
        report = json.loads(part.read_text().strip().splitlines()[-1])  # --json: the report on the last line
        dump_json(out / name, report)
        part.unlink()
    dump_json(out / "wall.json", {k: round(v, 1) for k, v in wall.items()})


def report(extra: str) -> None:
    out = results_dir("search_acceptance")
    rows = []
    for run in sorted((out / "runs").glob("*-s*")):
        if not (run / "holdout.json").exists():
            continue
        short, seed = run.name.rsplit("-s", 1)
        h = json.loads((run / "holdout.json").read_text())
        best = json.loads((run / "best.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        status = json.loads((run / "run.json").read_text())
        r32 = json.loads((run / "resnet32.json").read_text()) if (run / "resnet32.json").exists() else {}
        rows.append({"bench": short, "seed": int(seed), "holdout_spearman": h["spearman"],
                     "holdout_partial": h["partial_spearman"], "resnet32_spearman": r32.get("spearman"),
                     "search_fitness": best["search"]["fitness_value"],
                     "validation_fitness": best["search"].get("validation_fitness"),
                     "generations": status["generation"], "population": cfg["population"],
                     "budget_used": status["budget_used"], "stopped": status["stopped"],
                     "search_wall_s": json.loads((run / "wall.json").read_text())["search"],
                     "formula": best.get("formula", "")})
    for short in BENCHES:
        rs = [r for r in rows if r["bench"] == short]
        if len(rs) > 1:
            row = {"bench": short, "seed": "mean ± std"}
            for k in ("holdout_spearman", "holdout_partial", "resnet32_spearman"):
                m, s = mean_std([r[k] for r in rs if r[k] is not None])
                row[k] = f"{m:.3f} ± {s:.3f}"
            rows.append(row)
    caption = ("Search acceptance (issue 21): the exact commands of experiments/search_acceptance.py, one idle 2-core "
               "machine, one run at a time. NB201: --samples 100 --time-budget 600, holdout n = 1000 (holdout split, "
               "sample seed 1), ground truth CIFAR10TestAccuracy200Epochs; targets: every seed >= 0.92, mean >= 0.93. "
               "MQ ResNet-20 W{2,3,4}A8: --samples 50 --time-budget 300 --fitness spearman_partial, holdout all 454 "
               "configurations, ground truth PTQ top-1, partial ρ given the model size; ResNet-32: every row of its "
               "table; targets: every seed ρ >= 0.93 and partial >= 0.85. Every other setting at its default"
               + (f"; searches also given `{extra}`" if extra else "") + ".")
    write_report(out, "table", rows, COLUMNS, caption)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.search_acceptance", description=__doc__.splitlines()[0])
    p.add_argument("--benches", default="nb201,mq")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--extra", default="", help="appended to every search command")
    args = p.parse_args(argv)
    for short in [b for b in args.benches.split(",") if b]:
        for seed in parse_seeds(args.seeds):
            run_one(short, seed, args.jobs, args.extra)
            report(args.extra)
    report(args.extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
