"""Query API of an MQ-Bench table (the shape of EMQ's MQ-Bench-101 API).

    table = MQTable.load("mqbench/tables/resnet20_cifar10_w234a8.csv")
    table.accuracy(index=7); table.accuracy(bits=(4, 3, 2, ...))
    search, holdout = table.split(seed=0)          # 10% / 90%, disjoint, deterministic
    table.sample(50, seed=1, split="holdout")
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mqbench.errors import ConfigError, DataError
from mqbench.bench.build import META_SUFFIX, bits_to_str, read_rows

SPLITS = ("search", "holdout", "all")
_NOTED: set[str] = set()  # tables whose old absolute checkpoint path was already reported


def split_ids(ids, seed: int, search_fraction: float = 0.1) -> tuple[list, list]:
    """Deterministic disjoint (search, holdout) split of ``ids`` by a seeded permutation."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_search = max(1, int(round(search_fraction * len(ids)))) if ids else 0
    search = sorted(ids[i] for i in order[:n_search])
    holdout = sorted(ids[i] for i in order[n_search:])
    return search, holdout


def sample_ids(ids: list, n: int | None, seed: int) -> list:
    """``n`` ids drawn without replacement by a seeded permutation (all of them when n is None)."""
    if n is None or n >= len(ids):
        if n is not None and n > len(ids):
            raise ConfigError(f"asked for {n} samples but the split has only {len(ids)}")
        n = len(ids)
    order = np.random.default_rng(seed).permutation(len(ids))[:n]
    return [ids[i] for i in order]


def sample_split(ids, n: int | None, seed: int, split: str = "holdout", split_seed: int = 0) -> list:
    """``n`` ids from the search split, the holdout split or all of ``ids`` (seeded, deterministic)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    search, holdout = split_ids(ids, split_seed)
    pool = {"search": search, "holdout": holdout, "all": sorted(ids)}[split]
    return sample_ids(pool, n, seed)


@dataclass
class MQTable:
    path: Path
    meta: dict
    rows: dict[int, dict]  # index -> row

    @classmethod
    def load(cls, path: str | Path) -> "MQTable":
        path = Path(path)
        if not path.exists():
            raise DataError(f"MQ-Bench table not found: {path}")
        meta_path = path.with_name(path.name + META_SUFFIX)
        if not meta_path.exists():
            raise DataError(f"MQ-Bench table {path} has no metadata file {meta_path.name} beside it")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"table metadata {meta_path} is not valid JSON ({exc})") from None
        for key in ("model", "layer_names", "searchable", "fixed_bits", "layer_params", "layer_macs"):
            if key not in meta:
                raise DataError(f"table metadata {meta_path} lacks {key!r}")
        rows = read_rows(path, repair=False)
        if not rows:
            raise DataError(f"MQ-Bench table {path} has no rows")
        n_search = len(meta["searchable"])
        for row in rows:
            if len(row["bits"]) != n_search:
                raise DataError(f"table {path} row {row['index']}: {len(row['bits'])} bit-widths, metadata says {n_search} searchable layers")
        return cls(path, meta, {row["index"]: row for row in rows})

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def checkpoint_file(self) -> str:
        """File name of the FP checkpoint the table was built from (identified with ``checkpoint_sha256``)."""
        if "checkpoint_file" in self.meta:
            return self.meta["checkpoint_file"]
        old = self.meta.get("checkpoint")
        if not old or "checkpoint_sha256" not in self.meta:
            raise DataError(f"table metadata of {self.path.name} names no checkpoint_file and checkpoint_sha256")
        if str(self.path) not in _NOTED:
            _NOTED.add(str(self.path))
            print(f"note: {self.path.name} stores an absolute checkpoint path ({old}) from the machine that built it; "
                  f"ignoring it and looking for {Path(old).name} in the data root", file=sys.stderr)
        return Path(old).name

    def checkpoint(self, override: str | Path | None = None) -> Path:
        """The FP checkpoint, found in the data root (or ``override``) and verified by sha256 (one-line DataError)."""
        from mqbench.data.dataroot import resolve_checkpoint

        return resolve_checkpoint(self.checkpoint_file, self.meta.get("checkpoint_sha256", ""), override)

    @property
    def ids(self) -> list[int]:
        return sorted(self.rows)

    def bits(self, index: int) -> tuple[int, ...]:
        return self._row(index)["bits"]

    def full_bits(self, index: int) -> list[int]:
        """Weight bits of every quantizable layer (fixed layers at their fixed bits)."""
        out = [self.meta["fixed_bits"]] * len(self.meta["layer_names"])
        for i, b in zip(self.meta["searchable"], self.bits(index)):
            out[i] = b
        return out

    def _row(self, index: int) -> dict:
        try:
            return self.rows[int(index)]
        except (KeyError, ValueError):
            raise ConfigError(f"table {self.path.name} has no configuration with index {index!r}") from None

    def accuracy(self, index: int | None = None, bits=None) -> float:
        """Top-1 (%) by index or by the searchable layers' bits."""
        if (index is None) == (bits is None):
            raise ConfigError("give exactly one of index or bits")
        if index is not None:
            return self._row(index)["top1"]
        key = tuple(int(b) for b in bits)
        for row in self.rows.values():
            if row["bits"] == key:
                return row["top1"]
        raise ConfigError(f"configuration {bits_to_str(key)} is not in table {self.path.name}")

    def column(self, name: str, ids=None) -> np.ndarray:
        ids = self.ids if ids is None else ids
        return np.array([self._row(i)[name] for i in ids], dtype=float)

    def split(self, seed: int = 0, search_fraction: float = 0.1) -> tuple[list[int], list[int]]:
        return split_ids(self.ids, seed, search_fraction)

    def sample(self, n: int | None, seed: int, split: str = "holdout", split_seed: int = 0) -> list[int]:
        return sample_split(self.ids, n, seed, split, split_seed)


def compare_tables(path_a: str | Path, path_b: str | Path) -> dict:
    """Rank agreement of two tables' top-1 on their common bit configurations (e.g. two calibration seeds)."""
    from scipy.stats import kendalltau, spearmanr

    a, b = MQTable.load(path_a), MQTable.load(path_b)
    if a.meta["layer_names"] != b.meta["layer_names"]:
        raise ConfigError(f"tables {path_a} and {path_b} are for different networks")
    by_bits = {row["bits"]: row["top1"] for row in b.rows.values()}
    pairs = [(row["top1"], by_bits[row["bits"]]) for row in a.rows.values() if row["bits"] in by_bits]
    if len(pairs) < 3:
        raise ConfigError(f"tables share only {len(pairs)} configurations; need at least 3")
    x, y = np.array(pairs).T
    return {
        "n": len(pairs), "spearman": float(spearmanr(x, y).statistic),
        "kendall": float(kendalltau(x, y).statistic), "mean_abs_diff": float(np.abs(x - y).mean()),
    }


def table_summary(path: str | Path) -> dict:
    """Size of a table, its top-1 spread, and how the trivial proxies (model size, sum of bits) rank it."""
    from scipy.stats import kendalltau, spearmanr

    table = MQTable.load(path)
    ids = table.ids
    top1 = table.column("top1", ids)
    bit_sum = np.array([sum(table.bits(i)) for i in ids], dtype=float)
    size = table.column("size_mb", ids)
    samples = [i for i in ids if table.rows[i]["kind"] == "sample"]
    out = {
        "table": str(table.path), "model": table.meta["model"], "n": len(ids), "n_samples": len(samples),
        "fp_top1": table.meta.get("fp_top1"), "fp_bn_top1": table.meta.get("fp_bn_top1"),
        "top1_min": float(top1.min()), "top1_max": float(top1.max()), "top1_median": float(np.median(top1)),
        "worker_seconds_per_config_median": float(np.median(table.column("seconds", ids))),
        "build_wall_s": table.meta.get("build_wall_s"),
    }
    for name, proxy in (("model_size", size), ("bit_sum", bit_sum)):
        out[f"spearman_{name}"] = float(spearmanr(proxy, top1).statistic)
        out[f"kendall_{name}"] = float(kendalltau(proxy, top1).statistic)
    if samples:
        s_top1 = table.column("top1", samples)
        out["spearman_model_size_samples_only"] = float(spearmanr(table.column("size_mb", samples), s_top1).statistic)
        out["spearman_bit_sum_samples_only"] = float(spearmanr([sum(table.bits(i)) for i in samples], s_top1).statistic)
    return out
