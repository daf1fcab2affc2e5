"""Choose multi-fidelity rungs and margins from the children of audited searches.

    python -m experiments.race_margins --choose RUN [RUN ...] --check RUN [RUN ...] --out results/racing/nb201

An audited run (``evoproxy search ... --audit --rungs R1,R2,... --margins inf,...``) scores every child that
passes screening on every search sample and writes ``children.csv``: each child's threshold (the
``--entry-quantile`` of its parents' fitness), its fitness on the first ``r`` samples for every rung end ``r`` and its fitness on
all of them. Replayed on those rows, a schedule (a subset of the rung ends) with margins rejects a child early
when its fitness at one of its rungs is below ``threshold - margin``; the child *would have entered* the
population when its full fitness reaches the threshold. For every schedule, the margins (a grid, per rung) with
the least work whose **early-reject error** (early-rejected children that would have entered / early-rejected
children) on the ``--choose`` runs is at most ``--target`` are chosen; the error on the ``--check`` runs (other
seeds, never used for choosing) is then reported once. Work is the samples a child is scored on, as a fraction
of scoring every child on every sample (screening included; children rejected by screening are not counted).

Writes ``margins.md`` and ``margins.csv`` (every schedule's choice) under ``--out``.

    python -m experiments.race_margins --set nb201 CHOOSE_RUN CHECK_RUN median --set mq CHOOSE_RUN CHECK_RUN used \
        --out results/racing

chooses one setting for several benchmarks at once (the search's defaults are one setting): schedules as fractions
of each benchmark's samples (``FRACTIONS``), margins from the grid, the least mean work whose error on every
benchmark's choose run is within ``--target``; each benchmark's check run is then reported (``joint.md``).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

GRID = tuple(round(0.05 * i, 2) for i in range(0, 13))  # candidate margins 0 .. 0.6
FRACTIONS = ((0.2,), (0.3,), (0.5,), (0.2, 0.5), (0.3, 0.5), (0.2, 0.3), (0.2, 0.3, 0.5))  # joint schedules


def read_children(run: Path, threshold: str = "used") -> tuple[dict, list[int]]:
    """(columns as arrays, rung ends) of ``run/children.csv``: rows with a finite threshold and full fitness.
    ``threshold``: ``used`` (the run's own) or ``median`` (the parents' median fitness, from ``log.csv``'s
    ``median_fitness`` of the generation before: for one-population runs audited under another entry rule)."""
    path = Path(run) / "children.csv"
    if not path.exists():
        raise SystemExit(f"error: {path} not found (run the search with --audit)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if threshold == "median":
        from evoproxy.evolution.runfiles import read_log

        median = {int(r["generation"]): r["median_fitness"] for r in read_log(run)}
        rows = [{**r, "threshold": median[int(r["generation"]) - 1] if int(r["generation"]) > 0 else "-inf"}
                for r in rows]
    ends = sorted(int(k.rsplit("_", 1)[1]) for k in rows[0] if k.startswith("fitness_at_")) if rows else []
    keep = [r for r in rows if math.isfinite(float(r["threshold"])) and r["full_fitness"] not in ("", "nan")]
    cols = {"threshold": np.array([float(r["threshold"]) for r in keep]),
            "full": np.array([float(r["full_fitness"]) for r in keep])}
    for e in ends:
        cols[e] = np.array([float(r[f"fitness_at_{e}"]) for r in keep])
    config = json.loads((Path(run) / "config.json").read_text())
    cols["n_samples"] = int(config["samples"])
    cols["n_screen"] = min(int(config.get("screen_samples", 8)), cols["n_samples"])
    return cols, ends


def replay(cols: dict, schedule: tuple, margins: tuple) -> dict:
    """Early rejections, errors and work of ``schedule`` with ``margins`` on the rows of one or more runs."""
    n = len(cols["full"])
    rejected_at = np.full(n, -1)
    for end, m in zip(schedule, margins):
        est = cols[end]
        below = ~(est >= cols["threshold"] - m)  # NaN counts as below, as in the search
        rejected_at = np.where((rejected_at < 0) & below, end, rejected_at)
    early = rejected_at >= 0
    entered = cols["full"] >= cols["threshold"]
    samples = np.where(early, rejected_at, cols["n_samples"])
    return {"children": n, "early": int(early.sum()), "wrong": int((early & entered).sum()),
            "error": float((early & entered).sum() / max(early.sum(), 1)),
            "work": float(samples.mean() / cols["n_samples"]) if n else math.nan,
            "entered": int(entered.sum())}


def merge(runs: list, threshold: str = "used") -> tuple[dict, list]:
    parts, ends = [], None
    for run in runs:
        cols, e = read_children(run, threshold)
        ends = e if ends is None else [x for x in ends if x in e]
        parts.append(cols)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in ("threshold", "full", *ends)}
    n_samples = {p["n_samples"] for p in parts}
    if len(n_samples) != 1:
        raise SystemExit(f"error: the runs have different sample counts {sorted(n_samples)}")
    merged["n_samples"] = n_samples.pop()
    return merged, ends


def choose(cols: dict, ends: list, target: float) -> list[dict]:
    """For every non-empty schedule (subset of ``ends``, at most 3 rungs), the least-work margins within ``target``."""
    out = []
    for k in range(1, min(3, len(ends)) + 1):
        for schedule in itertools.combinations(ends, k):
            best = None
            for margins in itertools.product(GRID, repeat=k):
                r = replay(cols, schedule, margins)
                if r["error"] <= target and (best is None or r["work"] < best[1]["work"] - 1e-12):
                    best = (margins, r)
            if best is not None:
                out.append({"schedule": schedule, "margins": best[0], "choose": best[1]})
    return sorted(out, key=lambda d: d["choose"]["work"])


def _ends(cols: dict, fractions) -> tuple:
    return tuple(int(round(f * cols["n_samples"])) for f in fractions)


def choose_joint(sets: dict, target: float) -> list[dict]:
    """``sets``: {name: (choose columns, check columns)}; for every schedule of ``FRACTIONS`` present in every run,
    the least mean work margins within ``target`` on every choose run, with the check runs replayed."""
    out = []
    for fractions in FRACTIONS:
        if not all(set(_ends(c, fractions)) <= set(k for k in c if isinstance(k, int)) for pair in sets.values()
                   for c in pair):
            continue
        best = None
        for margins in itertools.product(GRID, repeat=len(fractions)):
            chosen = {n: replay(ch, _ends(ch, fractions), margins) for n, (ch, _) in sets.items()}
            if max(r["error"] for r in chosen.values()) > target:
                continue
            work = sum(r["work"] for r in chosen.values()) / len(chosen)
            if best is None or work < best[0] - 1e-12:
                best = (work, margins, chosen)
        if best is not None:
            checked = {n: replay(ck, _ends(ck, fractions), best[1]) for n, (_, ck) in sets.items()}
            out.append({"fractions": fractions, "margins": best[1], "work": best[0], "choose": best[2],
                        "check": checked})
    return sorted(out, key=lambda d: d["work"])


def main_joint(args, argv) -> int:
    sets = {name: (merge(choose.split(","), threshold)[0], merge(check.split(","), threshold)[0])
            for name, choose, check, threshold in args.set}
    rows = choose_joint(sets, args.target)
    lines = [f"One multi-fidelity setting for every benchmark (`python -m experiments.race_margins "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`): margins chosen so that the early-reject "
             f"error is <= {args.target:g} on every benchmark's choose run, least mean work first; the check runs (other "
             "seeds) are replayed once. Work: samples scored / scoring every child that passed screening on every "
             "sample.", "",
             "| fractions | margins | mean work (choose) | " + " | ".join(
                 f"{n}: choose error | {n}: check early / children | {n}: check wrong | {n}: check error | "
                 f"{n}: check work" for n in sets) + " |",
             "|" + "---|" * (3 + 5 * len(sets))]
    for r in rows:
        cells = []
        for n in sets:
            ch, ck = r["choose"][n], r["check"][n]
            cells.append(f"{ch['error']:.4f} | {ck['early']} / {ck['children']} | {ck['wrong']} | {ck['error']:.4f} | "
                         f"{ck['work']:.3f}")
        lines.append(f"| {' '.join(f'{f:g}' for f in r['fractions'])} | {' '.join(f'{m:g}' for m in r['margins'])} | "
                     f"{r['work']:.3f} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "joint.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.race_margins", description=__doc__.splitlines()[0])
    p.add_argument("--choose", nargs="+", help="audited run folders the margins are chosen on")
    p.add_argument("--check", nargs="+", help="audited run folders (other seeds) the choice is checked on")
    p.add_argument("--set", nargs=4, action="append", metavar=("NAME", "CHOOSE", "CHECK", "THRESHOLD"),
                   help="joint mode: a benchmark's choose and check runs (comma-separated) and its threshold rule")
    p.add_argument("--target", type=float, default=0.01, help="largest early-reject error allowed on --choose runs")
    p.add_argument("--threshold", choices=("used", "median"), default="used",
                   help="the entry threshold replayed: the runs' own, or the parents' median (from log.csv)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.set:
        return main_joint(args, argv)
    if not args.choose or not args.check:
        p.error("--choose and --check (or --set) are required")
    train, ends = merge(args.choose, args.threshold)
    test, test_ends = merge(args.check, args.threshold)
    ends = [e for e in ends if e in test_ends]
    rows = []
    for c in choose(train, ends, args.target):
        r = replay(test, c["schedule"], c["margins"])
        rows.append({"rungs": " ".join(map(str, c["schedule"])), "fractions": " ".join(
            f"{e / train['n_samples']:g}" for e in c["schedule"]), "margins": " ".join(f"{m:g}" for m in c["margins"]),
            "choose_children": c["choose"]["children"], "choose_early": c["choose"]["early"],
            "choose_error": round(c["choose"]["error"], 4), "choose_work": round(c["choose"]["work"], 4),
            "check_children": r["children"], "check_early": r["early"], "check_wrong": r["wrong"],
            "check_error": round(r["error"], 4), "check_work": round(r["work"], 4)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "margins.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rungs"])
        w.writeheader()
        w.writerows(rows)
    head = ("| rung ends | fractions | margins | choose: early / children | choose: error | choose: work | "
            "check: early / children | check: wrong | check: error | check: work |")
    lines = [f"Multi-fidelity schedules replayed on audited searches (`python -m experiments.race_margins "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`). Margins chosen on {', '.join(args.choose)} "
             f"(error <= {args.target:g}), checked once on {', '.join(args.check)}. Rows: children that passed "
             "screening with a finite threshold; work: samples scored / scoring every such child on every sample.",
             "", head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['rungs']} | {r['fractions']} | {r['margins']} | {r['choose_early']} / {r['choose_children']} "
                     f"| {r['choose_error']:.4f} | {r['choose_work']:.3f} | {r['check_early']} / {r['check_children']} | "
                     f"{r['check_wrong']} | {r['check_error']:.4f} | {r['check_work']:.3f} |")
    (out / "margins.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
