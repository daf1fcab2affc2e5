"""The path of the search's scoring request through the project's modules, traced rather than read.

    python -m experiments.trace_scoring [--trees 32] [--samples 100]

Builds an NAS-Bench-201 search (random search sample of ``--samples`` architectures, seed 0, multi-fidelity
on, ``--jobs 1`` so that the whole request runs in this process), loads its statistics (untraced), then scores
``--trees`` random trees with the engine's own call (``Search._score``) under :func:`sys.setprofile`. Every
call from a function of one project module into a function of another is an edge; the report counts

* **stays**: module entries by a call (consecutive calls inside one module are one stay);
* **climbs**: calls from a lower floor into a higher one (mqbench < primitives < evoproxy's rooms, bottom-up:
  language < scoring < evolution, fitting, allocation < the surface < experiments; the import contracts
  forbid such imports, so a climb is a callback handed down);
* **returns**: calls into a module that is already on the call stack below the caller (a module left and
  entered again before the request is over: a callback).

and lists the distinct edges in first-seen order. Writes ``results/scoring_trace/trace.md`` and ``trace.csv``.
"""
from __future__ import annotations

import argparse
import sys

from experiments.common import log, results_dir, write_report

FLOORS = {"mqbench": 0, "primitives": 1, "evoproxy": 5, "experiments": 6}
ROOMS = {"language": 2, "errors": 2, "scoring": 3, "evolution": 4, "fitting": 4, "allocation": 4}  # evoproxy's


def floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "evoproxy" and len(parts) > 1 and parts[1] in ROOMS:
        return ROOMS[parts[1]]
    return FLOORS.get(parts[0])


class CallTrace:
    """Module-to-module calls seen by :func:`sys.setprofile` (Python functions of project modules only)."""

    def __init__(self):
        self.stack: list[str] = []  # the project modules of the open Python frames, innermost last
        self.edges: dict[tuple[str, str], int] = {}
        self.stays = self.climbs = self.returns = 0

    def __call__(self, frame, event, arg):
        if event not in ("call", "return"):
            return
        module = frame.f_globals.get("__name__", "")
        if floor(module) is None:
            return
        if event == "return":
            if self.stack:
                self.stack.pop()
            return
        caller = self.stack[-1] if self.stack else None
        if caller is not None and caller != module:
            self.edges[(caller, module)] = self.edges.get((caller, module), 0) + 1
            self.stays += 1
            self.climbs += floor(module) > floor(caller)
            self.returns += module in self.stack[:-1]
        self.stack.append(module)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=32)
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args(argv)

    import random
    import tempfile

    from evoproxy.evolution.engine import Search
    from evoproxy.evolution.searchconfig import SearchConfig

    with tempfile.TemporaryDirectory(prefix="trace-") as out:
        config = SearchConfig(bench="nb201-cifar10", out=out, samples=args.samples, seed=0, jobs=1,
                              multi_fidelity=True, progress=False)
        search = Search(config)
        search._prepare()  # the statistics: loaded (or extracted) before the trace
        search._fresh_state()
        random.seed(0)
        trees = [search.space.random_tree() for _ in range(args.trees)]
        trace = CallTrace()
        sys.setprofile(trace)
        try:
            search._score(trees, search._new_counts())
        finally:
            sys.setprofile(None)
    rows = [{"caller": a, "callee": b, "calls": n, "climb": int(floor(b) > floor(a))} for (a, b), n in trace.edges.items()]
    modules = sorted({m for edge in trace.edges for m in edge})
    caption = (f"The search's scoring request traced: {args.trees} random trees scored by `Search._score` (NAS-Bench-201, "
               f"{args.samples} search architectures, seed 0, multi-fidelity, --jobs 1), every call between project "
               f"modules recorded with sys.setprofile (python -m experiments.trace_scoring --trees {args.trees} "
               f"--samples {args.samples}). {len(modules)} modules; {trace.stays} module entries by a call; "
               f"{trace.climbs} calls from a lower floor into a higher one; {trace.returns} calls into a module "
               f"already on the stack.")
    write_report(results_dir("scoring_trace"), "trace", rows, ["caller", "callee", "calls", "climb"], caption)
    log(caption)
    return 0


if __name__ == "__main__":
    sys.exit(main())
