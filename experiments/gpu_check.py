"""GPU check: statistics and PTQ on ``--device`` against the CPU, one JSON line.

    EVOPROXY_DATA=/data python -m experiments.gpu_check --device cuda --n 1000 --configs 100
    python -m experiments.gpu_check --device cpu --n 3 --configs 1        # smoke run on any machine

1. NAS-Bench-201 statistics (the search's default network statistics, no Hessian, batch 64, seed
   ``PROXY_SEED``) of ``--n`` architectures (a seeded sample of the whole table) on ``--device``, and
   of the first ``--cpu-n`` of them on the CPU (one worker, one torch thread, as the CPU default):
   seconds per architecture each, and the relative difference of every statistic tensor,
   max |device - cpu| / max |cpu| per (architecture, layer, statistic), reported as its maximum and median.
2. A ResNet-20 CIFAR-10 table (``--configs`` sampled configurations, no anchors, the committed
   tables' PTQ settings) built on ``--device``, and its first ``--cpu-configs`` on the CPU: seconds
   per configuration each and the largest top-1 difference (points) on the common rows.

Every run uses a fresh temporary cache, so nothing is read back from earlier runs. Needs the data
root (NATS CSV, CIFAR-10, the ResNet-20 checkpoint). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _stats(ids, names, device: str, cache_dir: Path) -> tuple[list, float]:
    from mqbench.benchmarks import BenchRef
    from primitives.items import StatsRequest
    from primitives.workspace import Workspace

    workspace = Workspace(*BenchRef.resolve("nb201-cifar10"))  # a fresh one: extraction measured, not its store
    workspace.batch(64)  # the CIFAR-10 batch is read outside the timings
    request = StatsRequest.of(names, 0, 0.01, 64, device)
    start = time.perf_counter()
    out = workspace.statistics(ids, request, jobs=1, progress=False, cache_dir=cache_dir)
    return out, time.perf_counter() - start


def _rel_diffs(a_list, b_list) -> list[float]:
    diffs = []
    for a, b in zip(a_list, b_list):
        for la, lb in zip(a.layers, b.layers):
            for name, ta in la.tensors.items():
                ta, tb = ta.double(), lb.tensors[name].double()
                scale = float(tb.abs().max()) if tb.numel() else 0.0
                gap = float((ta - tb).abs().max()) if tb.numel() else 0.0
                diffs.append(gap / scale if scale > 0 else (0.0 if gap == 0 else float("inf")))
    return diffs


def nb201_check(n: int, cpu_n: int, device: str, seed: int, tmp: Path) -> dict:
    from mqbench.benchmarks import get_benchmark
    from primitives.core import REGISTRY
    from primitives.items import available_names, uses_hessian

    bench = get_benchmark("nb201-cifar10")
    names = [p for p in available_names(bench) if getattr(REGISTRY[p], "default", True) and not uses_hessian([p])]
    ids = bench.sample(n, seed, "all")
    on_device, dev_s = _stats(ids, names, device, tmp / "stats-device")
    cpu_ids = ids[:cpu_n]
    on_cpu, cpu_s = _stats(cpu_ids, names, "cpu", tmp / "stats-cpu")
    diffs = _rel_diffs(on_device[:cpu_n], on_cpu)
    return {"n": len(ids), "cpu_n": len(cpu_ids), "primitives": len(names),
            "s_per_arch_device": round(dev_s / len(ids), 4), "s_per_arch_cpu": round(cpu_s / len(cpu_ids), 4),
            "max_rel_diff": float(np.max(diffs)) if diffs else None,
            "median_rel_diff": float(np.median(diffs)) if diffs else None, "tensors_compared": len(diffs)}


def _table(configs: int, device: str, out: Path) -> tuple[dict, float]:
    from mqbench.build import build_table, read_rows

    start = time.perf_counter()
    build_table("resnet20", configs, 0, out, jobs=1, progress=False, device=device, anchors=())
    seconds = time.perf_counter() - start
    return {r["index"]: r for r in read_rows(out)}, seconds


def table_check(configs: int, cpu_configs: int, device: str, tmp: Path) -> dict:
    on_device, dev_s = _table(configs, device, tmp / "device.csv")
    on_cpu, cpu_s = _table(cpu_configs, "cpu", tmp / "cpu.csv")
    common = sorted(set(on_device) & set(on_cpu))
    gaps = [abs(on_device[i]["top1"] - on_cpu[i]["top1"]) for i in common]
    per = lambda rows: round(float(np.mean([r["seconds"] for r in rows.values()])), 3)  # noqa: E731
    return {"configs": len(on_device), "cpu_configs": len(on_cpu),
            "s_per_config_device": per(on_device), "s_per_config_cpu": per(on_cpu),
            "wall_s_device": round(dev_s, 1), "wall_s_cpu": round(cpu_s, 1),
            "max_top1_diff_points": max(gaps) if gaps else None, "rows_compared": len(common)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu | cuda | auto")
    p.add_argument("--n", type=int, default=1000, help="NAS-Bench-201 architectures on the device")
    p.add_argument("--cpu-n", type=int, default=50, help="of which this many also on the CPU")
    p.add_argument("--configs", type=int, default=100, help="ResNet-20 configurations on the device")
    p.add_argument("--cpu-configs", type=int, default=5, help="of which this many also on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-table", action="store_true")
    args = p.parse_args(argv)

    from mqbench.devices import resolve_device
    from mqbench.errors import ConfigError, DataError

    try:
        device = resolve_device(args.device)
        torch.set_num_threads(1)  # the CPU side as the project runs it: one thread per worker
        result = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                  "torch": torch.__version__, "cpu_threads": 1}
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
            import os

            os.environ["EVOPROXY_CACHE"] = str(Path(tmp) / "cache")
            result["nb201"] = nb201_check(args.n, min(args.cpu_n, args.n), device, args.seed, Path(tmp))
            if not args.skip_table:
                result["resnet20_table"] = table_check(args.configs, min(args.cpu_configs, args.configs), device,
                                                       Path(tmp))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
