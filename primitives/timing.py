"""Time primitive extraction on NAS-Bench-201 networks.

    python -m primitives.timing --archs 20 --seed 0 [--jobs N] [--batch 64] [--threads T]
                               [--hessian-method exact|fd|fd_central]

Picks ``--archs`` architectures of the NATS-Bench TSS table by a seeded permutation, builds each
``NB201Network`` with ``torch.manual_seed(seed + index)`` in train mode, samples ``--batch``
CIFAR-10 training images with ``sample_batch("train", batch, seed)``, and times, per network,
three separate ``extract`` calls (model building excluded):

* cheap: weight, weight_grad, act_in, act_out, act_grad, fisher, act_x_grad (the data pass);
* eznas: the six ``@noise`` / ``@perturb`` primitives (two more passes);
* hessian: hessian_diag + hessian_trace with hutchinson_probes=4 and ``--hessian-method``
  (``core.extract``'s ``hessian_method``: exact double backprop, default; ``fd`` forward
  differences; ``fd_central`` central differences). The hessian call asks for no data-pass
  primitive, so ``fd`` computes the base gradient g(w) itself and its time is included in
  ``hessian_s_per_arch`` (1 + 4 gradient passes; the JSON says so in ``hessian_base_gradient``).

Prints a progress bar on stderr, a table on stdout, and as the last stdout line one JSON object
with the medians (``cheap_s_per_arch``, ``eznas_s_per_arch``, ``hessian_s_per_arch``) and the
settings, plus the medians of the extracting process's CPU time (``*_cpu_s_per_arch``; with one
thread this approximates the wall time on an idle machine, useful when other work shares the
cores) and the 1-minute load average at the end. With ``--jobs`` > 1 the networks are spread over joblib processes and each time is the
latency of one extract call inside its worker (``wall_s`` gives the overall wall clock).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

import torch

from mqbench.errors import DataError, EvoproxyError
from primitives import core

CHEAP = ("weight", "weight_grad", "act_in", "act_out", "act_grad", "fisher", "act_x_grad")
EZNAS = ("weight_grad@noise", "act_out@noise", "act_grad@noise",
         "weight_grad@perturb", "act_out@perturb", "act_grad@perturb")
HESSIAN = ("hessian_diag", "hessian_trace")
PROBES = 4


def read_archs(n: int, seed: int) -> list[str]:
    """``n`` architecture strings of the NATS TSS table, chosen by a seeded permutation."""
    from mqbench.data.dataroot import require

    path = require("nats-tss-cifar10")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if "ArchitectureString" not in (reader.fieldnames or ()):
                raise DataError(f"{path}: no ArchitectureString column (columns: {reader.fieldnames})")
            archs = [row["ArchitectureString"] for row in reader]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not archs:
        raise DataError(f"{path} holds no architectures")
    perm = torch.randperm(len(archs), generator=torch.Generator().manual_seed(seed))
    return [archs[i] for i in perm[: min(n, len(archs))].tolist()]


def time_arch(arch: str, index: int, seed: int, x: torch.Tensor, y: torch.Tensor, threads: int | None,
              hessian_method: str = "exact") -> dict:
    """Build network ``index`` and time the three extract calls on it (top-level: runs in workers)."""
    from mqbench.networks.nb201 import NB201Network

    torch.manual_seed(seed + index)
    model = NB201Network(arch).train()
    row = {"index": index, "arch": arch}
    for label, names, probes in (("cheap", CHEAP, 0), ("eznas", EZNAS, 0), ("hessian", HESSIAN, PROBES)):
        start, cpu = time.perf_counter(), time.process_time()
        stats = core.extract(model, x, y, names=list(names), hutchinson_probes=probes, seed=seed, threads=threads,
                             hessian_method=hessian_method)
        row[label] = time.perf_counter() - start
        row[label + "_cpu"] = time.process_time() - cpu
    row["layers"] = len(stats.layers)
    row["params"] = stats.total_params
    row["flops"] = stats.total_flops
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m primitives.timing", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=20, help="number of architectures (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=core.DEFAULT_THREADS,
                        help=f"torch threads per extract call (default {core.DEFAULT_THREADS}, the extract default)")
    parser.add_argument("--data", choices=("cifar10", "random"), default="cifar10",
                        help="cifar10 (default) or random N(0,1) images with random labels (no data needed)")
    parser.add_argument("--hessian-method", choices=core.HESSIAN_METHODS, default="exact",
                        help="how H z is computed: exact double backprop (default), fd (forward differences, "
                             "base gradient included in the time) or fd_central")
    args = parser.parse_args(argv)
    if args.archs < 1 or args.jobs < 1 or args.batch < 1 or args.threads < 1:
        print("error: --archs, --jobs, --batch and --threads must be positive", file=sys.stderr)
        return 2
    from tqdm import tqdm

    try:
        archs = read_archs(args.archs, args.seed)
        if args.data == "cifar10":
            from mqbench.data.cifar10 import sample_batch

            x, y = sample_batch("train", args.batch, args.seed)
        else:
            gen = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.batch, 3, 32, 32, generator=gen)
            y = torch.randint(0, 10, (args.batch,), generator=gen)
    except EvoproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    bar = tqdm(total=len(archs), desc="bench", unit="arch", file=sys.stderr, dynamic_ncols=True)
    rows = []
    if args.jobs == 1:
        for i, arch in enumerate(archs):
            rows.append(time_arch(arch, i, args.seed, x, y, args.threads, args.hessian_method))
            bar.update(1)
    else:
        from joblib import Parallel, delayed

        runner = Parallel(n_jobs=args.jobs, backend="loky", return_as="generator")
        for row in runner(delayed(time_arch)(arch, i, args.seed, x, y, args.threads, args.hessian_method) for i, arch in enumerate(archs)):
            rows.append(row)
            bar.update(1)
    bar.close()
    wall = time.perf_counter() - start

    print(f"{'#':>3} {'layers':>6} {'params':>8} {'MMACs':>7} {'cheap_s':>8} {'eznas_s':>8} {'hess_s':>8}  arch")
    for r in rows:
        print(f"{r['index']:>3} {r['layers']:>6} {r['params']:>8} {r['flops'] / 1e6:>7.1f} "
              f"{r['cheap']:>8.3f} {r['eznas']:>8.3f} {r['hessian']:>8.3f}  {r['arch']}")
    med = {k: statistics.median(r[k] for r in rows) for k in ("cheap", "eznas", "hessian")}
    cpu = {k: statistics.median(r[k + "_cpu"] for r in rows) for k in ("cheap", "eznas", "hessian")}
    print(f"median {'':>24} {med['cheap']:>8.3f} {med['eznas']:>8.3f} {med['hessian']:>8.3f}  "
          f"(targets on 2 cores: cheap <= 0.3 s, hessian <= 1.0 s)")
    print(f"median process CPU s {'':>14} {cpu['cheap']:>8.3f} {cpu['eznas']:>8.3f} {cpu['hessian']:>8.3f}  "
          f"(CPU time of the extracting process; ~ wall time on an idle machine when threads=1)")
    result = {
        "cheap_s_per_arch": round(med["cheap"], 4), "eznas_s_per_arch": round(med["eznas"], 4),
        "hessian_s_per_arch": round(med["hessian"], 4), "n_archs": len(rows), "batch": args.batch,
        "seed": args.seed, "threads": args.threads, "jobs": args.jobs, "data": args.data,
        "wall_s": round(wall, 2), "loadavg_1m": round(os.getloadavg()[0], 2),
        "cheap_cpu_s_per_arch": round(cpu["cheap"], 4), "eznas_cpu_s_per_arch": round(cpu["eznas"], 4),
        "hessian_cpu_s_per_arch": round(cpu["hessian"], 4),
        "hessian_method": args.hessian_method,
        "hessian_fd_rel_step": core.FD_REL_STEP if args.hessian_method != "exact" else None,
        "hessian_base_gradient": {"exact": "n/a", "fd": "computed and timed in the hessian call",
                                  "fd_central": "n/a"}[args.hessian_method],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
