"""Regenerate every experiment's tables and plots, in dependency order.

    python -m experiments.all [--skip name,name]

mq_correlation and nb201_correlation evolve the proxies that bit_allocation and parametric then use; each
experiment reuses finished search runs and cached per-item scores, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import importlib
import time

ORDER = ["mq_correlation", "nb201_correlation", "bit_allocation", "parametric", "ablation", "search_cost"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", default="", help="comma-separated experiments to leave out")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(ORDER)
    if unknown:
        p.error(f"unknown experiment(s): {', '.join(sorted(unknown))}; known: {', '.join(ORDER)}")
    total = time.perf_counter()
    for name in ORDER:
        if name in skip:
            continue
        start = time.perf_counter()
        print(f"== experiments.{name}", flush=True)
        code = importlib.import_module(f"experiments.{name}").main([])
        print(f"== experiments.{name}: {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            return code
    importlib.import_module("experiments.readme").main([])
    print(f"all experiments: {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
