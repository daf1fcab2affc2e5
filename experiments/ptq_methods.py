"""RTN vs AdaRound PTQ on ResNet-20 / CIFAR-10: top-1, seconds per configuration, and which proxy ranks best.

    python -m experiments.ptq_methods [--configs 10] [--seed 0] [--iters 200] [--rtn-check 2] [--jobs 2]

Configurations: the uniform W2/W3/W4 settings (first conv and last linear at 8 bit, A8: the committed
table's anchors) and ``--configs`` holdout configurations of the committed ResNet-20 table
(``mq-resnet20-cifar10``, holdout split, seeded sample as ``evoproxy baselines`` draws it). Each is
quantized with ``--ptq adaround`` (``--iters`` per block); RTN is re-measured for the uniform settings
and the first ``--rtn-check`` sampled configurations (a check that the pipeline reproduces the
table's top-1; the table's RTN top-1 is the RTN ground truth of the sample). The MQ baselines and
the evolved proxies of ``results/mq_correlation/runs/seed*/best.json`` score the same sample; their
Spearman / Kendall against each ground truth tell whether the PTQ method changes which proxy wins.

Per-configuration results go to ``results/ptq_methods/configs.csv`` as they finish (one line each);
a re-run skips the (method, configuration) pairs already there, so ``--configs 30`` after ``--configs
10`` only adds the new 20 (the sample's first 10 are the same).
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from experiments.common import REPO, announce, log, results_dir, write_report

BENCH = "mq-resnet20-cifar10"
COLUMNS = ["config", "kind", "method", "bits", "top1", "table_top1", "seconds", "iters"]


def _evaluate(job, label: str, method: str, full_bits: list[int]):
    from mqbench.build import evaluate_config

    acc, seconds = evaluate_config(job, full_bits)
    return label, method, acc, seconds


def _read_done(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {(r["config"], r["method"]): r for r in csv.DictReader(fh)}


def _scores(proxies: list[str], ids: list, args) -> dict:
    """{proxy: {id: score}}: the per-item scores committed in results/mq_correlation/items_resnet20.csv
    (written by ``experiments.mq_correlation`` through ``evoproxy.evaluation.proxy_reports``; a proxy file is
    keyed by its content hash), and ``proxy_reports`` for any (proxy, id) missing there."""
    from evoproxy.evaluation import proxy_reports
    from experiments.common import _proxy_key

    cache = REPO / "results" / "mq_correlation" / "items_resnet20.csv"
    keys = {p: _proxy_key(p) for p in proxies}
    out: dict = {p: {} for p in proxies}
    if cache.exists():
        by_key = {v: k for k, v in keys.items()}
        with open(cache, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["key"] in by_key and int(row["id"]) in ids:
                    out[by_key[row["key"]]][int(row["id"])] = float(row["score"]) if not row["error"] else float("nan")
    missing = [p for p in proxies if set(out[p]) != set(ids)]
    if missing:
        log(f"scoring {len(missing)} proxies not in {cache.name}: {', '.join(missing)}")
        items: dict = {}
        proxy_reports(BENCH, missing, samples=args.configs, seed=args.seed, split="holdout", jobs=args.jobs, items=items, progress=False)
        for r in items["results"]:
            for p in missing:
                out[p][r["id"]] = r["scores"][p]
    return out


def main(argv=None) -> int:
    from evoproxy.baselines import proxy_names
    from evoproxy.metrics import kendall, spearman
    from mqbench.benchmarks import get_benchmark
    from mqbench.build import BuildJob, bits_to_str
    from mqbench.fileio import append_line
    from mqbench.networks.resnet_cifar import CHECKPOINT_NORMALIZATION
    from mqbench.parallel import map_unordered
    from mqbench.ptq import PTQSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=10, help="holdout configurations of the committed table")
    p.add_argument("--seed", type=int, default=0, help="seed of the holdout sample")
    p.add_argument("--iters", type=int, default=PTQSettings.adaround_iters, help="AdaRound iterations per block")
    p.add_argument("--sample-iters", type=int, default=None,
                   help="AdaRound iterations per block for the sampled configurations (default: --iters)")
    p.add_argument("--rtn-check", type=int, default=2, help="sampled configurations whose RTN top-1 is re-measured")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "results" / "ptq_methods"))
    p.add_argument("--report-only", action="store_true",
                   help="run no PTQ: write the tables from the configurations already in configs.csv (correlations on those)")
    args = p.parse_args(argv)
    sample_iters = args.iters if args.sample_iters is None else args.sample_iters
    out = results_dir(Path(args.out).name) if Path(args.out).parent == REPO / "results" else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bench = get_benchmark(BENCH)
    checkpoint = bench.table.checkpoint(None)
    spec_ids = bench.sample(args.configs, args.seed, "holdout")
    table_top1 = dict(zip(spec_ids, bench.ground_truth(spec_ids)))
    anchors = {row: bench.bit_config(row) for row in (0, 1, 2)}  # uniform W2, W3, W4 (+ 8-bit first/last)
    names = {0: "W2A8", 1: "W3A8", 2: "W4A8"}
    anchor_top1 = dict(zip(anchors, bench.ground_truth(list(anchors))))

    settings = {("uniform", "rtn"): PTQSettings(), ("sample", "rtn"): PTQSettings(),
                ("uniform", "adaround"): PTQSettings(method="adaround", adaround_iters=args.iters),
                ("sample", "adaround"): PTQSettings(method="adaround", adaround_iters=sample_iters)}
    build_jobs = {key: BuildJob("resnet20", str(checkpoint), CHECKPOINT_NORMALIZATION, None, s, threads=1)
                  for key, s in settings.items()}
    plan = []  # (label, kind, method, full bits, table top1): uniform, then AdaRound samples, then RTN checks
    for row, bits in anchors.items():
        for method in ("rtn", "adaround"):
            plan.append((names[row], "uniform", method, bits, anchor_top1[row]))
    plan += [(f"id{item}", "sample", "adaround", bench.bit_config(item), table_top1[item]) for item in spec_ids]
    plan += [(f"id{item}", "sample", "rtn", bench.bit_config(item), table_top1[item]) for item in spec_ids[: args.rtn_check]]

    per_config = out / "configs.csv"
    done = _read_done(per_config)
    want_iters = {"uniform": args.iters, "sample": sample_iters}
    if any(int(r["iters"]) != want_iters[r["kind"]] for r in done.values() if r["method"] == "adaround"):
        raise SystemExit(f"{per_config} holds AdaRound results of other iteration counts; pass another --out")
    if not per_config.exists():
        append_line(per_config, ",".join(COLUMNS) + "\n")
    todo = [] if args.report_only else [t for t in plan if (t[0], t[2]) not in done]
    info = {(t[0], t[2]): t for t in plan}
    log(f"ptq_methods: {len(plan)} (configuration, method) pairs, {len(todo)} to run on {args.jobs} workers")
    wall = time.perf_counter()
    tasks = [(build_jobs[(kind, method)], label, method, bits) for label, kind, method, bits, _ in todo]
    for n, (label, method, acc, seconds) in enumerate(map_unordered(_evaluate, tasks, jobs=args.jobs), start=1):
        _, kind, _, bits, ref = info[(label, method)]
        iters = want_iters[kind] if method == "adaround" else 0
        append_line(per_config, f"{label},{kind},{method},{bits_to_str(bits)},{acc:.2f},{ref:.2f},{seconds:.1f},{iters}\n")
        log(f"[{n}/{len(todo)}] {label} {method}: top-1 {acc:.2f} (table RTN {ref:.2f}), {seconds:.1f} s, "
            f"{time.perf_counter() - wall:.0f} s elapsed")
    done = _read_done(per_config)

    # -------------------------------------------------------------- uniform settings: RTN vs AdaRound
    uniform_rows = []
    for row in anchors:
        if (names[row], "rtn") not in done or (names[row], "adaround") not in done:
            continue
        rtn, ada = done[(names[row], "rtn")], done[(names[row], "adaround")]
        uniform_rows.append({"setting": names[row], "rtn_top1": float(rtn["top1"]), "table_top1": float(rtn["table_top1"]),
                             "adaround_top1": float(ada["top1"]), "gain": float(ada["top1"]) - float(rtn["top1"]),
                             "rtn_s": float(rtn["seconds"]), "adaround_s": float(ada["seconds"])})
    measured = [k for k, i in enumerate(spec_ids) if (f"id{i}", "adaround") in done]  # all of them unless --report-only
    checks = [done[(f"id{i}", "rtn")] for i in spec_ids[: args.rtn_check] if (f"id{i}", "rtn") in done]
    rtn_truth = np.array([table_top1[spec_ids[k]] for k in measured], dtype=float)
    ada_truth = np.array([float(done[(f"id{spec_ids[k]}", "adaround")]["top1"]) for k in measured], dtype=float)

    # ------------------------------------------------------------------ proxies vs the two ground truths
    evolved = sorted((REPO / "results" / "mq_correlation" / "runs").glob("seed*/best.json"))
    published = [REPO / "examples" / "proxies" / f"{n}.json" for n in ("emq_published", "emq_published_alt")]
    proxies = proxy_names("mq") + [str(p) for p in published + evolved]
    scores_of = _scores(proxies, spec_ids, args)
    proxy_rows = []
    for label in proxies:
        scores = np.array([scores_of[label][spec_ids[k]] for k in measured], dtype=float)
        name = (f"evolved ({Path(label).parent.name})" if label.endswith("best.json")
                else Path(label).stem if label.endswith(".json") else label)
        proxy_rows.append({"proxy": name, "rho_rtn": spearman(scores, rtn_truth), "tau_rtn": kendall(scores, rtn_truth),
                           "rho_adaround": spearman(scores, ada_truth), "tau_adaround": kendall(scores, ada_truth),
                           "failed": int(np.sum(~np.isfinite(scores)))})
    best = {key: max(proxy_rows, key=lambda r: -np.inf if not np.isfinite(r[key]) else r[key])["proxy"]
            for key in ("rho_rtn", "rho_adaround")}
    rho, tau = spearman(ada_truth, rtn_truth), kendall(ada_truth, rtn_truth)
    ada_s = [float(r["seconds"]) for r in done.values() if r["method"] == "adaround"]
    rtn_s = [float(r["seconds"]) for r in done.values() if r["method"] == "rtn"]

    ada = settings[("uniform", "adaround")]
    caption = (
        f"ResNet-20 / CIFAR-10 (JPEG test split, 10,000 images), first conv and last linear at 8 bit, A8. "
        f"RTN: the committed tables' pipeline (per-channel MSE-clipped round to nearest -> BN re-estimation -> "
        f"8-bit activation calibration). AdaRound: the same grid and the same steps after it, with learned "
        f"rounding by block-wise output reconstruction ({args.iters} iterations per block for the uniform settings, "
        f"{sample_iters} for the sampled configurations; BRECQ used 20,000; batch {ada.adaround_batch}, Adam lr "
        f"{ada.adaround_lr}, regulariser weight {ada.adaround_reg}, beta 20->2 after a {ada.adaround_warmup:.0%} warm-up, "
        f"seed {ada.adaround_seed}) on the same 1024 class-balanced calibration images (calib seed 0). "
        f"Seconds: one configuration in one worker process on one torch thread, {args.jobs} workers on a shared "
        f"2-core machine (other jobs running), so absolute seconds are inflated; their ratio is the useful figure. "
        f"Command: `python -m experiments.ptq_methods --configs {args.configs} --seed {args.seed} --iters {args.iters} "
        f"--sample-iters {sample_iters} --rtn-check {args.rtn_check} --jobs {args.jobs}`"
        + ("; tables written with --report-only from configs.csv." if args.report_only else
           f"; this run's PTQ wall time {time.perf_counter() - wall:.0f} s (resumed pairs not counted).")
        + (f" Report of a partial run: {len(measured)} of the {len(spec_ids)} sampled configurations have AdaRound results."
           if len(measured) < len(spec_ids) else ""))
    u_md = write_report(out, "uniform", uniform_rows, ["setting", "rtn_top1", "table_top1", "adaround_top1", "gain", "rtn_s", "adaround_s"],
                       "Uniform settings. " + caption,
                       {"rtn_top1": "RTN top-1 (re-measured)", "table_top1": "RTN top-1 (table)", "adaround_top1": "AdaRound top-1",
                        "gain": "AdaRound − RTN", "rtn_s": "RTN s/config", "adaround_s": "AdaRound s/config"}, digits=2)
    p_caption = (
        f"Proxies on n = {len(measured)} holdout configurations of the committed ResNet-20 table (holdout sample seed "
        f"{args.seed}); proxy scores as committed in results/mq_correlation/items_resnet20.csv (the scores behind "
        f"the README's MQ-Bench-C10 table: one batch of 64 CIFAR-10 training images, seed 0); ground truths: the table's RTN top-1 and this "
        f"run's AdaRound top-1. Spearman between the two ground truths: {rho:.3f} (Kendall {tau:.3f}). Best proxy by "
        f"Spearman: {best['rho_rtn']} under RTN, {best['rho_adaround']} under AdaRound. RTN re-measured on "
        f"{len(checks)} sampled configurations: " + ", ".join(f"{r['config']} {float(r['top1']):.2f} (table {float(r['table_top1']):.2f})" for r in checks)
        + f". Mean s/config: RTN {np.mean(rtn_s):.1f} (n={len(rtn_s)}), AdaRound {np.mean(ada_s):.1f} (n={len(ada_s)}). " + caption)
    p_md = write_report(out, "proxies", proxy_rows, ["proxy", "rho_rtn", "tau_rtn", "rho_adaround", "tau_adaround", "failed"],
                       p_caption, {"rho_rtn": "ρ vs RTN", "tau_rtn": "τ vs RTN", "rho_adaround": "ρ vs AdaRound",
                                   "tau_adaround": "τ vs AdaRound"})
    announce(per_config, *u_md, *p_md)
    print(f"ground truths: Spearman {rho:.3f}, Kendall {tau:.3f} on n={len(measured)}; best proxy: RTN {best['rho_rtn']}, "
          f"AdaRound {best['rho_adaround']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
