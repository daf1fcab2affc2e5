"""One Benchmark interface for MQ-Bench tables and NAS-Bench-201, as the scoring path and the search consume them.

    bench = get_benchmark("nb201-cifar10")                 # or "mq-resnet20-cifar10", table=..., gt_column=...
    search, holdout = bench.split(seed=0)                 # 10% / 90%, disjoint
    ids = bench.sample(100, seed=1, split="search")
    model, bit_config = bench.build(ids[0])               # network ready for primitives.extract
    y = bench.ground_truth(ids)                           # accuracies, aligned with ids

Proxies are computed on one seeded batch of ``bench.dataset`` (CIFAR-10 for the built-ins; a spec's ``[data]
dataset``: cifar100=PATH, imagefolder=PATH) in ``bench.normalization``, whatever the ground-truth column, with
the model in ``bench.model_mode`` ("train" for freshly initialised NAS networks, "eval" for pretrained quantized ones).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from mqbench.errors import ConfigError, DataError
from mqbench.fileio import read_csv_rows
from mqbench.bench.table import SPLITS, MQTable, sample_ids, split_ids

if TYPE_CHECKING:
    from mqbench.bench.spec import BenchmarkSpec

TABLES_DIR = Path(__file__).resolve().parents[1] / "tables"
_BENCHMARKS: dict[str, Callable[..., "Benchmark"]] = {}


def register_benchmark(name: str):
    def wrap(factory):
        _BENCHMARKS[name] = factory
        return factory

    return wrap


def benchmark_names() -> list[str]:
    return list(_BENCHMARKS)


def get_benchmark(name, table: str | Path | None = None, gt_column: str | None = None,
                  checkpoint: str | Path | None = None) -> "Benchmark":
    """A registered benchmark, or one of your own: a spec file path (``*.toml``) or a
    :class:`mqbench.bench.spec.BenchmarkSpec`. ``table``, ``gt_column`` and ``checkpoint`` override the
    table, its ground-truth column and where an MQ benchmark's FP checkpoint is read from."""
    from mqbench.bench.spec import BenchmarkSpec, is_spec_path, load_spec

    if isinstance(name, BenchmarkSpec):
        return SpecBenchmark(name, table, gt_column, checkpoint)
    if name in _BENCHMARKS:
        return _BENCHMARKS[name](table=table, gt_column=gt_column, checkpoint=checkpoint)
    if is_spec_path(name):
        return SpecBenchmark(load_spec(name), table, gt_column, checkpoint)
    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}, or a spec file (*.toml)")


@dataclass(frozen=True)
class BenchRef:
    """A picklable reference that resolves a benchmark (:func:`load_bench`; a worker process resolves it once,
    in its :class:`primitives.workspace.Workspace`)."""

    name: str | BenchmarkSpec  # a registered name, a spec file's absolute path or a BenchmarkSpec
    table: str | None = None
    gt_column: str | None = None
    stamp: str = ""  # the table's (and spec file's) mtime and size: a changed file is re-read by the workers
    checkpoint: str | None = None  # MQ tables: read the FP checkpoint here instead of the data root

    @classmethod
    def resolve(cls, name: str, table=None, gt_column: str | None = None, checkpoint=None) -> tuple["BenchRef", "Benchmark"]:
        """(reference naming the table's resolved file, benchmark): workers then never depend on their environment."""
        ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
        bench = load_bench(cls(name, None if table is None else str(table), gt_column, checkpoint=ckpt))
        return cls(bench.handle, str(bench.source), gt_column, bench.stamp(), ckpt), bench


BenchSpec = BenchRef  # deprecated name of BenchRef


def load_bench(ref: BenchRef) -> "Benchmark":
    """The benchmark of ``ref``, resolved afresh (nothing is kept here: a process that needs it more than once
    holds it, e.g. in a :class:`primitives.workspace.Workspace`)."""
    return get_benchmark(ref.name, table=ref.table, gt_column=ref.gt_column, checkpoint=ref.checkpoint)


class Benchmark(ABC):
    """ids -> ground truth; which network (and bit configuration) an item is; deterministic splits.

    A benchmark owns what differs between kinds: ``kind`` ("nas" or "mq", the registered baselines
    that apply), ``network(item)`` / ``network_key(item)`` (the FP network and what identifies its
    weights: items that share a key share their network statistics), ``bit_config(item)`` (weight
    bits per layer, or None) and ``quantizer`` (the weight quantizer of its bit configurations, or
    None when items have none), ``default_probes`` (Hutchinson probes a search uses by default).
    """

    name: str
    kind: str = "nas"
    normalization: str = "cifar10"
    dataset: str = "cifar10"  # the images statistics are taken on (a mqbench.data.datasets reference)
    model_mode: str = "train"
    size_label: str = "params"
    gt_column: str = ""
    quantizer: Callable | None = None
    act_bits: int = 8
    default_probes: int = 0
    default_batch: int = 64

    @property
    def handle(self):
        """What names this benchmark to a worker process (``BenchRef.name``)."""
        return self.name

    def stamp(self) -> str:
        """mtime and size of the files the benchmark was read from (a changed file is re-read by workers)."""
        stat = self.source.stat()
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    @property
    @abstractmethod
    def ids(self) -> list: ...

    @abstractmethod
    def ground_truth(self, ids) -> np.ndarray: ...

    @abstractmethod
    def size(self, ids) -> np.ndarray:
        """The obvious size signal the partial correlation controls for (params or model size)."""

    @abstractmethod
    def network_key(self, item) -> str:
        """Identifies the weights of ``network(item)`` (checkpoint hash or init seed), for caches."""

    @abstractmethod
    def network(self, item) -> torch.nn.Module:
        """The item's (FP) network, in ``model_mode``."""

    def bit_config(self, item) -> list[int] | None:
        """Weight bits per Conv2d/Linear in forward order, or None."""
        return None

    @property
    @abstractmethod
    def source(self) -> Path:
        """The file the benchmark was read from."""

    def build(self, item) -> tuple[torch.nn.Module, list[int] | None]:
        return self.network(item), self.bit_config(item)

    def model_key(self, item) -> str:
        return self.network_key(item)

    def verify(self) -> None:
        """Check, before any item is scored, that what every item needs is there (one-line errors)."""

    def split(self, seed: int = 0, search_fraction: float = 0.1) -> tuple[list, list]:
        return split_ids(self.ids, seed, search_fraction)

    def sample(self, n: int | None, seed: int, split: str = "holdout", split_seed: int | None = None) -> list:
        """``n`` ids of ``split`` ("search", "holdout" or "all") of :meth:`split` (by ``split_seed`` when given)."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        pools = dict(zip(("search", "holdout"), self.split() if split_seed is None else self.split(split_seed)))
        return sample_ids(sorted(self.ids) if split == "all" else pools[split], n, seed)


# ---------------------------------------------------------------------------------------- NAS-Bench-201

NB201_GT_COLUMNS = ("CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs")
NB201_BASE_PARAMS = 73306  # stem, reduction blocks, last BN and a 10-class head: the all-none cell


def nb201_param_count(arch: str, num_classes: int = 10) -> int:
    """Parameters of the NB201 network for ``arch`` (closed form; equals counting the built model)."""
    from mqbench.networks.nb201 import parse_arch

    ops = [op for node in parse_arch(arch) for op in node]
    per_cell = {"nor_conv_3x3": lambda c: 9 * c * c + 2 * c, "nor_conv_1x1": lambda c: c * c + 2 * c}
    cells = sum(5 * per_cell[op](c) for c in (16, 32, 64) for op in ops if op in per_cell)
    return NB201_BASE_PARAMS + (num_classes - 10) * 65 + cells


def read_nb201_csv(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(architecture strings, {column: accuracies}) of a NATS-TSS CSV, validated."""
    from mqbench.networks.nb201 import parse_arch

    header, records = read_csv_rows(path, "NAS-Bench-201 table")
    if "ArchitectureString" not in header:
        raise DataError(f"{path} has no ArchitectureString column (columns: {', '.join(header) or 'none'})")
    gt_cols = [c for c in NB201_GT_COLUMNS if c in header]
    if not gt_cols:
        raise DataError(f"{path} has none of the accuracy columns {', '.join(NB201_GT_COLUMNS)}")
    archs, values = [], {c: [] for c in gt_cols}
    for lineno, row in records:
        arch = row["ArchitectureString"]
        try:
            parse_arch(arch)
            for c in gt_cols:
                values[c].append(float(row[c]))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path} line {lineno}: {exc}") from None
        archs.append(arch)
    if not archs:
        raise DataError(f"{path} has no architectures")
    if len(set(archs)) != len(archs):
        raise DataError(f"{path} lists some architecture more than once")
    return archs, {c: np.asarray(v, dtype=float) for c, v in values.items()}


@register_benchmark("nb201-cifar10")
class NB201Benchmark(Benchmark):
    """NAS-Bench-201 (NATS-TSS) architectures; id = row index in the CSV; network init seed = id."""

    normalization = "cifar10"
    model_mode = "train"
    size_label = "params"

    def __init__(self, table: str | Path | None = None, gt_column: str | None = None, num_classes: int = 10,
                 checkpoint: str | Path | None = None):
        from mqbench.data.dataroot import require

        if checkpoint is not None:
            raise ConfigError("--checkpoint applies to MQ tables; NAS-Bench-201 networks are freshly initialised")
        self.name = "nb201-cifar10"
        self.path = Path(table) if table else require("nats-tss-cifar10")
        self.archs, self.columns = read_nb201_csv(self.path)
        self.gt_column = gt_column or NB201_GT_COLUMNS[0]
        if self.gt_column not in self.columns:
            raise ConfigError(f"ground-truth column {self.gt_column!r} not in {self.path.name}; present: {', '.join(self.columns)}")
        self.num_classes = num_classes

    @property
    def ids(self) -> list[int]:
        return list(range(len(self.archs)))

    def arch(self, item: int) -> str:
        return self.archs[int(item)]

    def ground_truth(self, ids) -> np.ndarray:
        return self.columns[self.gt_column][np.asarray(ids, dtype=int)]

    @property
    def source(self) -> Path:
        return self.path

    def network(self, item) -> torch.nn.Module:
        from mqbench.networks.nb201 import NB201Network

        torch.manual_seed(int(item))
        return NB201Network(self.arch(item), num_classes=self.num_classes).train()

    def network_key(self, item) -> str:
        return f"nb201:{self.arch(item)}:init-seed-{int(item)}"

    def size(self, ids) -> np.ndarray:
        return np.array([nb201_param_count(self.arch(i), self.num_classes) for i in ids], dtype=float)


# ---------------------------------------------------------------------------------------- MQ-Bench

class MQBenchmark(Benchmark):
    """An MQ-Bench table: id = configuration index; build = pretrained FP network + its bit configuration."""

    kind = "mq"
    normalization = "imagenet"  # what the pretrained checkpoints were trained with
    model_mode = "eval"
    size_label = "model size"
    gt_column = "top1"
    default_probes = 8

    def __init__(self, name: str, default_table: Path, table: str | Path | None = None, gt_column: str | None = None,
                 checkpoint: str | Path | None = None):
        if gt_column not in (None, "top1"):
            raise ConfigError(f"MQ tables have one ground-truth column, 'top1'; got {gt_column!r}")
        from mqbench.quant.fakequant import quantize_weight

        self.name = name
        self.table = MQTable.load(table or default_table)
        self.checkpoint = checkpoint
        self.quantizer = quantize_weight
        self.act_bits = int(self.table.meta.get("act_bits", 8))
        self._fp_model = None

    @property
    def ids(self) -> list[int]:
        return self.table.ids

    def ground_truth(self, ids) -> np.ndarray:
        return self.table.column("top1", ids)

    def verify(self) -> None:
        self.table.checkpoint(self.checkpoint)

    def fp_model(self) -> torch.nn.Module:
        if self._fp_model is None:
            from mqbench.networks.resnet_cifar import load_pretrained

            depth = int(self.table.meta["model"].removeprefix("resnet"))
            self._fp_model = load_pretrained(depth, self.table.checkpoint(self.checkpoint))
        return self._fp_model

    @property
    def source(self) -> Path:
        return Path(self.table.path)

    def network(self, item) -> torch.nn.Module:
        import copy

        return copy.deepcopy(self.fp_model()).eval()

    def bit_config(self, item) -> list[int]:
        return self.table.full_bits(item)

    def network_key(self, item) -> str:
        return f"{self.table.meta['model']}:{self.table.meta['checkpoint_sha256'][:16]}"

    def size(self, ids) -> np.ndarray:
        return self.table.column("size_mb", ids)


def _mq_factory(model: str):
    name = f"mq-{model}-cifar10"
    default = TABLES_DIR / f"{model}_cifar10_w234a8.csv"

    def factory(table=None, gt_column=None, checkpoint=None):
        if table is None and not default.exists():
            raise DataError(f"no committed table for {name} at {default}; build one with "
                            f"'evoproxy table build --model {model} --out {default}' or pass --table")
        return MQBenchmark(name, default, table, gt_column, checkpoint)

    register_benchmark(name)(factory)


for _model in ("resnet20", "resnet32"):
    _mq_factory(_model)


# ---------------------------------------------------------------------------------------- your own

class SpecBenchmark(Benchmark):
    """A benchmark from a :class:`mqbench.bench.spec.BenchmarkSpec`: the user's table and model factory.

    NAS (``kind = "nas"``): ``network(item)`` = ``factory(row)`` right after ``torch.manual_seed(init seed)``
    (the item's id, its row index, or a fixed integer), as the built-in NB201 benchmark seeds with the id.
    MQ (``kind = "mq"``): ``factory()`` / ``factory(checkpoint)`` once, then a copy per item, with the
    row's bits for the layers not in ``fixed_layers``. Ids, splits and samples follow the built-ins'
    rule (:func:`mqbench.bench.table.split_ids` over the ids), so equal ids give equal samples.
    """

    def __init__(self, spec, table: str | Path | None = None, gt_column: str | None = None,
                 checkpoint: str | Path | None = None):
        from mqbench.bench.spec import data_path, import_ref, read_table, source_digest

        self.spec = spec
        self.name, self.kind, self.dataset = spec.name, spec.kind, spec.dataset
        self.normalization, self.model_mode, self.dataset = spec.normalization, spec.mode, spec.dataset
        self.size_label = "params" if spec.kind == "nas" else "model size"
        self.default_probes, self.default_batch, self.act_bits = spec.hutchinson_probes, spec.batch, spec.act_bits
        self.gt_column = gt_column or spec.gt_column
        self.path = Path(table) if table else data_path(spec.table)
        self.table = read_table(self.path, spec, self.gt_column)
        self.factory = import_ref(spec.factory, spec.python_path)
        self.quantizer = import_ref(spec.quantizer, spec.python_path, "quantizer") if spec.kind == "mq" else None
        self.checkpoint = checkpoint if checkpoint is not None else (spec.checkpoint and data_path(spec.checkpoint))
        self._digest = f"{spec.factory}@{source_digest(self.factory)}"
        self._fp_model, self._fp_key, self._quant_layers, self._sizes = None, None, None, {}

    @property
    def handle(self):
        return self.spec.handle

    def stamp(self) -> str:
        stat = Path(self.spec.source).stat() if self.spec.source else None
        return super().stamp() + (f";{stat.st_mtime_ns}:{stat.st_size}" if stat else "")

    @property
    def source(self) -> Path:
        return self.path

    @property
    def ids(self) -> list:
        return list(self.table.ids)

    def _row(self, item):
        if item not in self.table.rows:
            raise ConfigError(f"{self.path.name} has no id {item!r}")
        return item if isinstance(item, str) else int(item)

    def ground_truth(self, ids) -> np.ndarray:
        return np.array([self.table.truth[self._row(i)] for i in ids], dtype=float)

    def split(self, seed: int | None = None, search_fraction: float | None = None) -> tuple[list, list]:
        return split_ids(self.ids, self.spec.split_seed if seed is None else seed,
                         self.spec.search_fraction if search_fraction is None else search_fraction)

    def _call(self, what: str, *args) -> torch.nn.Module:
        from mqbench.bench.spec import one_line

        try:
            model = self.factory(*args)
        except Exception as exc:
            raise ConfigError(f"factory {self.spec.factory} raised on {what}: {one_line(exc)}") from None
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"factory {self.spec.factory} returned {type(model).__name__} on {what}, not a torch.nn.Module")
        return model.train() if self.model_mode == "train" else model.eval()

    def _seed(self, item) -> int:
        s = self.spec.init_seed
        return int(item) if s == "id" else self.table.ids.index(item) if s == "row" else int(s)

    def fp_model(self) -> torch.nn.Module:
        """MQ: the FP network, built once (the checkpoint verified against ``checkpoint_sha256`` first)."""
        if self._fp_model is None:
            from mqbench.bench.spec import checkpoint_args

            args = checkpoint_args(self.checkpoint, self.spec.checkpoint_sha256, self.name)
            self._fp_model = self._call(f"the FP model{f' ({args[0]})' if args else ''}", *args)
        return self._fp_model

    def network(self, item) -> torch.nn.Module:
        import copy

        item = self._row(item)
        if self.kind == "mq":
            return copy.deepcopy(self.fp_model())  # in model_mode already
        torch.manual_seed(self._seed(item))
        return self._call(self.table.where(item), dict(self.table.rows[item]))

    def network_key(self, item) -> str:
        from mqbench.bench.spec import row_digest, weights_digest

        item = self._row(item)
        if self.kind == "mq":
            self._fp_key = self._fp_key or f"spec:{self._digest}:weights-{weights_digest(self.fp_model())}"
            return self._fp_key
        return f"spec:{self._digest}:row-{row_digest(self.table.rows[item])}:init-seed-{self._seed(item)}"

    def bit_config(self, item) -> list[int] | None:
        from mqbench.bench.spec import full_bits

        if self.kind != "mq":
            return None
        item = self._row(item)
        return full_bits(self.spec, self.table.bits[item], len(self._layers()), self.table.where(item))

    def _layers(self) -> list:
        from mqbench.quant.fakequant import quantizable_layers

        self._quant_layers = self._quant_layers or quantizable_layers(self.fp_model())
        return self._quant_layers

    def verify(self) -> None:
        """Build what scoring will need (the FP model and every bit configuration, or the first network)."""
        if self.kind == "mq":
            for item in self.table.ids:
                self.bit_config(item)
        else:
            with torch.random.fork_rng(devices=[]):
                self.network(self.table.ids[0])

    def size(self, ids) -> np.ndarray:
        if self.table.size is not None:
            return np.array([self.table.size[self._row(i)] for i in ids], dtype=float)
        if self.kind == "mq":
            from mqbench.quant.fakequant import model_size_mb

            w, b = zip(*[(m.weight.numel(), 0 if m.bias is None else m.bias.numel()) for _, m in self._layers()])
            return np.array([model_size_mb(w, b, self.bit_config(i)) for i in ids], dtype=float)
        for i in map(self._row, ids):
            if i not in self._sizes:
                with torch.random.fork_rng(devices=[]):
                    self._sizes[i] = sum(p.numel() for p in self.network(i).parameters())
        return np.array([self._sizes[self._row(i)] for i in ids], dtype=float)
