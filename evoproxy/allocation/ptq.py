"""PTQ top-1 of chosen configurations, as the MQ-Bench table builder computes it, cached in a CSV.

Each configuration goes through ``mqbench.bench.build.evaluate_config`` with the table's ``PTQSettings``, so
top-1 is comparable with the table rows (rounded to 2 decimals, as the table stores it). The cache
has one fsynced line per configuration, keyed by (model, bits, checkpoint sha256, PTQ settings hash);
a torn last line (a crash mid-write) is cut off when read.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

from evoproxy.errors import DataError
from mqbench.fileio import append_line, complete_lines

CACHE_COLUMNS = ("model", "bits", "top1", "size_mb", "bops_g", "calib_seed", "fp_sha256", "ptq_key", "seconds")


def default_cache() -> Path:
    """``<cache root>/allocation/ptq_cache.csv`` (see :func:`mqbench.data.dataroot.cache_root`)."""
    from mqbench.data.dataroot import cache_root

    return cache_root() / "allocation" / "ptq_cache.csv"


def ptq_key(info) -> str:
    return hashlib.sha256(json.dumps(info.ptq.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def read_cache(path: Path) -> list[dict]:
    """Rows of the PTQ cache; a torn last line (a crash mid-write) is cut off."""
    lines = complete_lines(path)
    if not lines:
        return []
    if tuple(lines[0].split(",")) != CACHE_COLUMNS:
        raise DataError(f"{path} has columns {lines[0]}, expected {','.join(CACHE_COLUMNS)}; move it away")
    rows = []
    for line in lines[1:]:
        parts = line.split(",")
        if len(parts) != len(CACHE_COLUMNS):
            continue
        row = dict(zip(CACHE_COLUMNS, parts))
        row["top1"] = float(row["top1"])
        rows.append(row)
    return rows


class PTQRunner:
    """PTQ top-1 of configurations (searchable-layer bit tuples) of one model, cached in ``cache_path``."""

    def __init__(self, info, cache_path: str | Path | None = None, progress: bool = False):
        from mqbench.bench.build import bits_from_str

        self.info = info
        self.path = Path(cache_path) if cache_path is not None else default_cache()
        self.progress = progress
        self.key = ptq_key(info)
        self.sha = info.meta["checkpoint_sha256"][:16]
        self.known: dict[tuple, float] = {}
        for row in read_cache(self.path):
            if row["model"] == info.model and row["fp_sha256"] == self.sha and row["ptq_key"] == self.key:
                self.known[bits_from_str(row["bits"])] = row["top1"]
        self.new_runs = 0
        self.seconds = 0.0

    def run(self, configs: Sequence[tuple], desc: str = "PTQ") -> dict[tuple, float]:
        """{config: top-1 %} for every configuration, running PTQ for those not cached yet."""
        from tqdm import tqdm

        from mqbench.bench.build import BuildJob, bits_to_str, evaluate_config

        todo = list(dict.fromkeys(tuple(c) for c in configs if tuple(c) not in self.known))
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists() or self.path.stat().st_size == 0:
                append_line(self.path, ",".join(CACHE_COLUMNS) + "\n")
            info = self.info
            job = BuildJob(info.model, info.checkpoint, info.meta["normalization"], None, info.ptq, threads=1)
            for cfg in tqdm(todo, desc=desc, unit="cfg", file=sys.stderr, disable=not self.progress,
                            dynamic_ncols=True):
                acc, seconds = evaluate_config(job, info.full_bits(cfg))
                acc = round(acc, 2)  # as the table stores it
                append_line(self.path, f"{info.model},{bits_to_str(cfg)},{acc:.2f},{info.size_mb(cfg):.6f},"
                                       f"{info.bops_g(cfg):.6f},{info.ptq.calib_seed},{self.sha},{self.key},"
                                       f"{seconds:.3f}\n")
                self.known[cfg] = acc
                self.new_runs += 1
                self.seconds += seconds
        return {tuple(c): self.known[tuple(c)] for c in configs}
