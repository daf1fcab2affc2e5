"""The allocation problem of one model: layers, fixed and searchable bits, costs, budgets.

Everything comes from a committed MQ-Bench table's metadata (``mqbench/tables/<model>_cifar10_w234a8.csv``
+ ``.meta.json``): layer names, which layers are searchable (first conv and last linear are fixed,
at ``fixed_bits``), the allowed bit-widths, per-layer weight/bias element counts and MACs, the
activation bits and the PTQ settings. The FP network is the table's checkpoint (sha256 checked).

Budgets (:func:`parse_budget`), one of

* ``"uniform-K"``: the model size of the uniform K-bit configuration (searchable layers at K bits,
  fixed layers at their bits), e.g. ``"uniform-3"``;
* a model size: ``"0.1MB"``, ``"98KB"`` or a bare number (MB); MB = 2^20 bytes, KB = 2^10 bytes, as
  the tables' ``size_mb`` (weights at their bits + 32-bit biases, :func:`mqbench.quant.fakequant.model_size_mb`);
* bit operations per image: ``"1.2GBOPs"``, ``"950MBOPs"``, ``"3e8BOPs"`` (prefixes K/M/G/T = 10^3/6/9/12;
  BOPs = Σ MACs x weight bits x activation bits, the tables' ``bops_g`` x 10^9).

The unit is case-insensitive; a configuration meets the budget when its size (resp. BOPs) is <= it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from evoproxy.errors import ConfigError, DataError

BATCH = 64  # CIFAR-10 training images the proxies see (batch seed 0), as the experiments
SIZE_UNITS = {"mb": 2**20, "kb": 2**10}
BOPS_PREFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_NUMBER = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)"
_SIZE_RE = re.compile(rf"^{_NUMBER}\s*(mb|kb)?$", re.IGNORECASE)
_BOPS_RE = re.compile(rf"^{_NUMBER}\s*([kmgt]?)bops$", re.IGNORECASE)
_UNIFORM_RE = re.compile(r"^uniform-(\d+)$", re.IGNORECASE)
BUDGET_HELP = "uniform-K (size of the uniform K-bit configuration), a size such as 0.1MB or 98KB, or BOPs such as 1.2GBOPs"


@dataclass(frozen=True)
class Budget:
    """A parsed budget: ``kind`` "uniform" (value = K), "size" (value in bytes) or "bops" (value in BOPs)."""

    kind: str
    value: float
    text: str

    @property
    def metric(self) -> str:
        """What the budget limits: "size" or "bops"."""
        return "bops" if self.kind == "bops" else "size"


def parse_budget(budget) -> Budget:
    """A :class:`Budget` from ``"uniform-3"``, ``"0.1MB"``, ``"98KB"``, ``"1.2GBOPs"`` or a number (MB)."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise ConfigError(f"budget must be a string or a number of MB, got {type(budget).__name__}")
    if isinstance(budget, (int, float)):
        return _size_budget(float(budget), "mb", f"{budget:g}MB")
    text = budget.strip()
    m = _UNIFORM_RE.match(text)
    if m:
        k = int(m.group(1))
        if not 1 <= k <= 32:
            raise ConfigError(f"budget {budget!r}: uniform bit-width must be between 1 and 32")
        return Budget("uniform", k, f"uniform-{k}")
    m = _SIZE_RE.match(text)
    if m:
        return _size_budget(float(m.group(1)), (m.group(2) or "mb").lower(), text)
    m = _BOPS_RE.match(text)
    if m:
        value = float(m.group(1)) * BOPS_PREFIXES[m.group(2).lower()]
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"budget {budget!r} must be positive")
        return Budget("bops", value, text)
    raise ConfigError(f"bad budget {budget!r}: expected {BUDGET_HELP}")


def _size_budget(value: float, unit: str, text: str) -> Budget:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"budget {text!r} must be a positive size")
    return Budget("size", value * SIZE_UNITS[unit], text)


@dataclass
class ModelInfo:
    """One model's allocation problem (see the module docstring); configs are searchable-layer bit tuples."""

    model: str
    meta: dict
    table: object  # mqbench.bench.table.MQTable
    ptq: object  # mqbench.quant.ptq.PTQSettings
    checkpoint: str
    fp_model: object = None
    batch_size: int = BATCH
    _batch: tuple | None = field(default=None, repr=False)

    @property
    def searchable(self) -> list[int]:
        return list(self.meta["searchable"])

    @property
    def allowed(self) -> tuple[int, ...]:
        return tuple(sorted(int(b) for b in self.meta["allowed"]))

    @property
    def weights(self) -> list[int]:
        """Weight elements of the searchable layers (the cost weights of a size budget)."""
        return [int(self.meta["layer_params"][i]) for i in self.searchable]

    @property
    def act_bits(self) -> int:
        return int(self.meta.get("act_bits", 8))

    def full_bits(self, config) -> list[int]:
        """Weight bits of every quantizable layer (fixed layers at their fixed bits)."""
        if len(config) != len(self.searchable):
            raise ConfigError(f"{self.model} has {len(self.searchable)} searchable layers, got {len(config)} bit-widths")
        out = [int(self.meta["fixed_bits"])] * len(self.meta["layer_names"])
        for i, b in zip(self.searchable, config):
            out[i] = int(b)
        return out

    def total_bits(self, config) -> int:
        """Model size in bits (weights at their bits + 32-bit biases), as model_size_mb counts it."""
        return int(sum(w * b + bias * 32 for w, bias, b in
                       zip(self.meta["layer_params"], self.meta["layer_bias"], self.full_bits(config))))

    def fixed_bits_total(self) -> int:
        return self.total_bits((0,) * len(self.searchable))

    def size_mb(self, config) -> float:
        from mqbench.quant.fakequant import model_size_mb

        return model_size_mb(self.meta["layer_params"], self.meta["layer_bias"], self.full_bits(config))

    def total_bops(self, config) -> int:
        return int(sum(int(m) * b * self.act_bits for m, b in zip(self.meta["layer_macs"], self.full_bits(config))))

    def bops_g(self, config) -> float:
        from mqbench.quant.fakequant import bops

        return bops(self.meta["layer_macs"], self.full_bits(config), self.act_bits) / 1e9

    def uniform(self, k: int) -> tuple[int, ...]:
        return (int(k),) * len(self.searchable)

    def problem(self, budget: Budget) -> tuple[list[int], int]:
        """(cost weight per searchable layer, budget left for them) in integer units (bits or BOPs)."""
        if budget.metric == "bops":
            weights = [int(self.meta["layer_macs"][i]) * self.act_bits for i in self.searchable]
            return weights, math.floor(budget.value) - self.total_bops((0,) * len(self.searchable))
        total = self.total_bits(self.uniform(budget.value)) if budget.kind == "uniform" else math.floor(budget.value * 8)
        return self.weights, total - self.fixed_bits_total()

    def describe(self, budget: Budget) -> str:
        """The budget in words, e.g. 'uniform-3 (0.0966 MB)' or '1.2GBOPs (1.2000 GBOPs)'."""
        if budget.metric == "bops":
            return f"{budget.text} ({budget.value / 1e9:.4f} GBOPs)"
        mb = self.size_mb(self.uniform(budget.value)) if budget.kind == "uniform" else budget.value / 2**20
        return f"{budget.text} ({mb:.4f} MB)"

    @property
    def model_key(self) -> str:
        return f"{self.model}:{self.meta['checkpoint_sha256'][:16]}"

    def batch(self):
        """The proxies' batch: ``batch_size`` CIFAR-10 training images, seed 0, the checkpoint's normalization."""
        if self._batch is None:
            from mqbench.data.cifar10 import sample_batch

            self._batch = sample_batch("train", self.batch_size, seed=0, normalization=self.meta["normalization"])
        return self._batch


def table_path(model: str) -> Path:
    from mqbench.bench.benchmarks import TABLES_DIR

    return TABLES_DIR / f"{model}_cifar10_w234a8.csv"


def load_model(model: str, table: str | Path | None = None, batch: int = BATCH) -> ModelInfo:
    """The allocation problem of ``model`` from its committed MQ-Bench table (or ``table``) and its checkpoint."""
    from mqbench.networks.resnet_cifar import load_pretrained
    from mqbench.quant.ptq import PTQSettings
    from mqbench.bench.table import MQTable

    if not isinstance(model, str) or not model.startswith("resnet") or not model.removeprefix("resnet").isdigit():
        raise ConfigError(f"unknown model {model!r}: expected a CIFAR ResNet with an MQ-Bench table, such as resnet20")
    path = Path(table) if table is not None else table_path(model)
    if table is None and not path.exists():
        from mqbench.bench.benchmarks import TABLES_DIR

        known = sorted(p.name.split("_")[0] for p in TABLES_DIR.glob("*_cifar10_w234a8.csv"))
        raise ConfigError(f"no MQ-Bench table for {model} ({path.name}); models with a table: {', '.join(known)}")
    tab = MQTable.load(path)
    meta = dict(tab.meta)
    if meta.get("model") != model:
        raise DataError(f"table {path.name} is for {meta.get('model')!r}, not {model!r}")
    for key in ("layer_bias", "allowed", "ptq", "normalization", "checkpoint_sha256"):
        if key not in meta:
            raise DataError(f"table metadata of {path.name} lacks {key!r}")
    checkpoint = tab.checkpoint()  # found by file name in the data root, sha256 verified
    fp = load_pretrained(int(model.removeprefix("resnet")), checkpoint)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive number of images, got {batch!r}")
    return ModelInfo(model, meta, tab, PTQSettings(**meta["ptq"]), str(checkpoint), fp.eval(), batch)
