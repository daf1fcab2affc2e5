"""Shared helpers of the experiment scripts: result folders, tables (CSV + markdown), searches, plots."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def results_dir(name: str) -> Path:
    path = RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def write_report(folder: Path, stem: str, rows: list[dict], columns: list[str], caption: str,
                 headers: dict | None = None, digits: int = 3) -> tuple[Path, Path]:
    """A result report: ``folder/stem.csv`` (all columns, full precision) and ``folder/stem.md`` (caption + rows in
    markdown). The committed reports keep their file names (``table.md``, ``table_resnet20.md``, ...)."""
    headers = headers or {}
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    lines = [caption, "", "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c), digits).replace("|", "\\|") for c in columns) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


write_table = write_report  # deprecated name


def announce(*paths) -> None:
    for p in paths:
        print(f"wrote {Path(p).relative_to(REPO) if Path(p).is_relative_to(REPO) else p}")


def finished_run(config) -> bool:
    """Whether ``config.out`` holds a finished run of exactly these settings (its best.json is final).

    Checkpoints are not committed (several MB each); a committed run folder keeps config.json,
    log.csv, hall_of_fame.json and best.json, which is all an experiment needs."""
    from evoproxy.runfiles import read_log

    out = Path(config.out)
    try:
        saved = json.loads((out / "config.json").read_text())
        rows = read_log(out)
    except (OSError, ValueError):
        return False
    if not (out / "best.json").exists() or not rows:
        return False
    same = all(json.dumps(saved.get(k)) == json.dumps(v) for k, v in config.result_settings().items())
    return same and int(rows[-1]["generation"]) >= config.generations


def seeded_searches(experiment: str, bench: str, seeds, jobs: int, settings: dict) -> dict[int, str]:
    """{seed: best.json path} of one search per seed under ``results/<experiment>/runs/seed<S>/``
    (finished runs reused, interrupted ones resumed)."""
    from evoproxy.searchconfig import SearchConfig

    folder = results_dir(experiment) / "runs"
    out = {}
    for s in seeds:
        run = folder / f"seed{s}"
        log(f"search seed {s} -> {run}")
        run_or_resume_search(SearchConfig(bench=bench, out=str(run), seed=s, jobs=jobs, **settings))
        out[s] = str(run / "best.json")
    return out


def run_or_resume_search(config) -> None:
    """``run_search(config)``: skipped when ``config.out`` holds the finished run, resumed from a checkpoint."""
    from evoproxy.evolution import run_search

    if finished_run(config):
        log(f"{config.out}: finished run found, reused")
        return
    resume = (Path(config.out) / "checkpoint.json").exists()
    run_search(config, resume=resume)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` / ``"0,2,5-7"`` -> the seeds, in order."""
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------- cached scoring

def _proxy_key(name: str) -> str:
    """A registered proxy's name, or a proxy file's path plus a hash of its content."""
    import hashlib

    if name.lower().endswith(".json"):
        path = Path(name).resolve()
        label = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
        return f"{label}#{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    return name


def score_with_cache(bench: str, proxies: list[str], samples, seed: int, split: str, cache_csv: Path, *,
                     table=None, gt_columns=(None,), jobs: int = 1) -> dict:
    """{gt_column: {proxy: evaluator report}} for every proxy on one sample, reusing the per-item
    scores kept in ``cache_csv`` (one row per proxy and item; a proxy file is keyed by its content),
    so a re-run only scores what is new. Scores do not depend on the ground-truth column, so each
    column's reports come from the same scores."""
    import numpy as np

    from evoproxy.evaluation import proxy_reports, report
    from mqbench.benchmarks import BenchRef

    _, b = BenchRef.resolve(bench, table)
    ids = [int(i) for i in b.sample(samples, seed, split)]
    cached: dict[str, dict[int, dict]] = {}
    if cache_csv.exists():
        with open(cache_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                cached.setdefault(row["key"], {})[int(row["id"])] = row
    keys = {p: _proxy_key(p) for p in proxies}
    missing = [p for p in proxies if not set(ids) <= set(cached.get(keys[p], {}))]
    if missing:
        log(f"scoring {len(missing)} proxies on {len(ids)} {split} items: {', '.join(missing)}")
        items: dict = {}
        proxy_reports(bench, missing, samples, seed, split, table=table, jobs=jobs, items=items)
        new = not cache_csv.exists()
        with open(cache_csv, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["key", "id", "score", "error", "seconds"])
            if new:
                writer.writeheader()
            for r in items["results"]:
                for p in missing:
                    row = {"key": keys[p], "id": int(r["id"]), "score": repr(float(r["scores"][p])),
                           "error": r["errors"].get(p, ""), "seconds": repr(float(r["seconds"][p]))}
                    writer.writerow(row)
                    cached.setdefault(keys[p], {})[int(r["id"])] = {k: str(v) for k, v in row.items()}
    results = [{"id": i, "scores": {p: float(cached[keys[p]][i]["score"]) for p in proxies},
                "errors": {p: cached[keys[p]][i]["error"] for p in proxies if cached[keys[p]][i]["error"]},
                "seconds": {p: float(cached[keys[p]][i]["seconds"]) for p in proxies}} for i in ids]
    out = {}
    for column in gt_columns:
        _, bc = BenchRef.resolve(bench, table, column)
        truth = np.asarray(bc.ground_truth(ids), dtype=float)
        size = np.asarray(bc.size(ids), dtype=float)
        out[column] = {p: {**report(p, results, truth, size, bc.size_label), "gt_column": bc.gt_column,
                           "n_items": len(ids)} for p in proxies}
    return out


def mean_std(values) -> tuple[float, float]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def evolved_rows(reports: dict, evolved: dict, metrics: list[str]) -> list[dict]:
    """Table rows of the evolved proxies (one per search seed, with its formula) plus their mean ± std."""
    from evoproxy.tree import load_proxy

    rows, seeds = [], []
    for s, path in evolved.items():
        seeds.append(reports[path])
        rows.append({"proxy": f"evolved (seed {s})", **{k: reports[path][k] for k in metrics},
                     "formula": load_proxy(path).formula})
    if len(seeds) > 1:
        row = {"proxy": f"evolved, mean ± std over {len(seeds)} seeds", "formula": ""}
        for k in metrics:
            m, sd = mean_std([r[k] for r in seeds])
            if k in ("n", "failed"):
                row[k] = int(round(m))
            elif k == "seconds_per_sample":
                row[k] = m
            else:
                row[k] = f"{m:.3f} ± {sd:.3f}" if math.isfinite(m) else "-"
        rows.append(row)
    return rows
