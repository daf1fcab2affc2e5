"""Bring-your-own benchmark: a spec (a TOML file or a :class:`BenchmarkSpec`) -> a table and a model factory.

    spec = load_spec("examples/benchmarks/nb201.toml")     # parsed by tomllib, validated here
    bench = mqbench.bench.benchmarks.get_benchmark(spec)         # or get_benchmark("path/to/spec.toml")

A spec file (every key but ``name``, ``kind``, ``[table] path/gt_column`` and ``[model] factory`` is
optional; relative paths are taken from the spec file's folder, ``$EVOPROXY_DATA/...`` from the data root)::

    name = "my-nas"                    # label in reports and proxy files
    kind = "nas"                       # "nas": factory(row) -> network per row; "mq": one FP network + bits per row
    [table]
    path = "my_table.csv"              # CSV with a header line
    id_column = "id"                   # omitted: id = 0-based data row index
    gt_column = "acc"                  # ground truth (numbers); --gt-column overrides
    size_column = "params"             # omitted: parameter count (nas) / model size in MB from the bits (mq)
    [model]
    factory = "my_pkg.nets:build"      # nas: build(row) with row = {column: text}; mq: build() or build(checkpoint)
    python_path = ["."]                # folders put on sys.path before importing the factory (the user's plug-in)
    init_seed = "id"                   # nas: torch.manual_seed(<id> | <row index> for "row" | <an integer>) before each call
    checkpoint = "$EVOPROXY_DATA/pretrained/x.th"   # mq: passed to the factory; --checkpoint overrides
    checkpoint_sha256 = "..."          # mq: verified before the factory reads the file
    mode = "train"                     # network mode while statistics are taken (default: train for nas, eval for mq)
    [bits]                             # mq only: weight bits of every Conv2d/Linear in forward order
    column = "bits"                    # one column of "4-3-2-..." strings, or: columns = ["b1", "b2", ...]
    fixed_layers = [0, -1]             # layers not in the row (negative = from the end), at fixed_bits
    fixed_bits = 8
    act_bits = 8
    quantizer = "mqbench.quant:quantize_weight"    # quantizer(weight, bits) -> quantized weight
    [data]
    dataset = "cifar10"                # the images statistics are taken on: cifar10, cifar100=PATH, imagefolder=PATH
    normalization = "cifar10"          # default: cifar10 for nas, imagenet for mq
    [protocol]
    batch = 64                         # statistics' batch size (exposed as bench.default_batch)
    hutchinson_probes = 0              # default: 0 for nas, 8 for mq
    split_seed = 0                     # search/holdout split: the built-ins' rule (split_ids) with these
    search_fraction = 0.1

Nothing in a spec is evaluated: TOML is parsed by ``tomllib``, values are checked here, and the factory
``module:function`` is checked for its syntax, then imported with ``importlib`` like a plug-in.
User-caused problems raise one-line :class:`ConfigError` / :class:`DataError` naming the file, the row
(CSV line and id) and the column.
"""
from __future__ import annotations

import importlib
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mqbench.errors import ConfigError, DataError
from mqbench.fileio import read_csv_rows

KINDS = ("nas", "mq")
MODES = ("train", "eval")
BIT_RANGE = range(2, 9)
DATA_PREFIX = "$EVOPROXY_DATA/"
_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_INT = re.compile(r"[+-]?\d+")

# TOML section -> {key: BenchmarkSpec field}; "" is the top level.
SCHEMA: dict[str, dict[str, str]] = {
    "": {"name": "name", "kind": "kind"},
    "table": {"path": "table", "id_column": "id_column", "gt_column": "gt_column", "size_column": "size_column"},
    "model": {"factory": "factory", "python_path": "python_path", "init_seed": "init_seed", "checkpoint": "checkpoint",
              "checkpoint_sha256": "checkpoint_sha256", "mode": "mode"},
    "bits": {"column": "bits_column", "columns": "bits_columns", "fixed_layers": "fixed_layers",
             "fixed_bits": "fixed_bits", "act_bits": "act_bits", "quantizer": "quantizer"},
    "data": {"dataset": "dataset", "normalization": "normalization"},
    "protocol": {"batch": "batch", "hutchinson_probes": "hutchinson_probes", "split_seed": "split_seed",
                 "search_fraction": "search_fraction"},
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that defines a benchmark of one's own (hashable and picklable; see the module docstring).

    Paths are absolute, or ``$EVOPROXY_DATA/<relative>`` (resolved in the data root where used);
    ``source`` is the spec file it was read from ("" for a spec built in Python)."""

    name: str
    kind: str
    table: str
    gt_column: str
    factory: str
    id_column: str | None = None
    size_column: str | None = None
    python_path: tuple[str, ...] = ()
    init_seed: str | int = "id"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    mode: str | None = None
    bits_column: str | None = None
    bits_columns: tuple[str, ...] = ()
    fixed_layers: tuple[int, ...] = ()
    fixed_bits: int = 8
    act_bits: int = 8
    quantizer: str = "mqbench.quant:quantize_weight"
    dataset: str = "cifar10"
    normalization: str | None = None
    batch: int = 64
    hutchinson_probes: int | None = None
    split_seed: int = 0
    search_fraction: float = 0.1
    source: str = ""

    def __post_init__(self):
        where = self.source or "benchmark spec"
        for name in ("python_path", "bits_columns", "fixed_layers"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: {name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("name", "table", "gt_column", "factory", "quantizer", "dataset"):
            _want(where, name, getattr(self, name), str)
        for name in ("id_column", "size_column", "checkpoint", "checkpoint_sha256", "bits_column", "normalization", "mode"):
            if getattr(self, name) is not None:
                _want(where, name, getattr(self, name), str)
        for name in ("fixed_bits", "act_bits", "batch", "split_seed"):
            _want(where, name, getattr(self, name), int)
        _choice(where, "kind", self.kind, KINDS)
        from mqbench.data.datasets import parse_dataset

        try:
            parse_dataset(self.dataset)
        except ConfigError as exc:
            raise ConfigError(f"{where}: dataset: {exc}") from None
        if self.mode is not None:
            _choice(where, "mode", self.mode, MODES)
        object.__setattr__(self, "mode", self.mode or ("train" if self.kind == "nas" else "eval"))
        object.__setattr__(self, "normalization", self.normalization or ("cifar10" if self.kind == "nas" else "imagenet"))
        from mqbench.data.cifar10 import NORMALIZATION

        _choice(where, "normalization", self.normalization, tuple(NORMALIZATION))
        if self.hutchinson_probes is None:
            object.__setattr__(self, "hutchinson_probes", 0 if self.kind == "nas" else 8)
        _want(where, "hutchinson_probes", self.hutchinson_probes, int)
        for ref_name in ("factory", "quantizer"):
            check_ref(getattr(self, ref_name), f"{where}: {ref_name}")
        if not (self.init_seed in ("id", "row") or (isinstance(self.init_seed, int) and not isinstance(self.init_seed, bool))):
            raise ConfigError(f"{where}: init_seed must be \"id\", \"row\" or an integer, got {self.init_seed!r}")
        if isinstance(self.search_fraction, bool) or not isinstance(self.search_fraction, (int, float)) \
                or not 0 < self.search_fraction < 1:
            raise ConfigError(f"{where}: search_fraction must be a number in (0, 1), got {self.search_fraction!r}")
        if self.batch < 2 or self.hutchinson_probes < 0:
            raise ConfigError(f"{where}: batch must be >= 2 and hutchinson_probes >= 0")
        for name in ("fixed_bits", "act_bits"):
            if getattr(self, name) not in BIT_RANGE:
                raise ConfigError(f"{where}: {name} must be in {BIT_RANGE[0]}..{BIT_RANGE[-1]}, got {getattr(self, name)!r}")
        for name, kind in (("python_path", str), ("bits_columns", str), ("fixed_layers", int)):
            for v in getattr(self, name):
                _want(where, name, v, kind)
        if self.kind == "mq" and (self.bits_column is None) == (not self.bits_columns):
            raise ConfigError(f"{where}: an mq spec needs exactly one of [bits] column or [bits] columns")
        if self.kind == "nas" and (self.bits_column or self.bits_columns or self.checkpoint):
            raise ConfigError(f"{where}: [bits] and checkpoint apply to kind = \"mq\" only")

    @property
    def handle(self):
        """What names this spec to worker processes: its file when it has one, else the object itself."""
        return self.source or self


def _want(where: str, name: str, value, kind) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be {'a string' if kind is str else 'an integer'}, got {value!r}")


def _choice(where: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(allowed)}, got {value!r}")


def check_ref(ref, what: str) -> str:
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ConfigError(f"{what} must read 'package.module:function', got {ref!r}")
    return ref


def is_spec_path(name) -> bool:
    """Whether ``get_benchmark`` should read ``name`` as a spec file (a .toml name or an existing file)."""
    return isinstance(name, (str, Path)) and (str(name).endswith(".toml") or Path(name).is_file())


def _resolve(text: str, base: Path) -> str:
    if text.startswith(DATA_PREFIX):
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def data_path(text: str) -> Path:
    """A spec path as a file path (``$EVOPROXY_DATA/...`` in the current data root)."""
    if text.startswith(DATA_PREFIX):
        from mqbench.data.dataroot import data_root

        return data_root() / text[len(DATA_PREFIX):]
    return Path(text)


def load_spec(path: str | Path) -> BenchmarkSpec:
    """The spec of a TOML file (one-line ConfigError for a missing file, bad TOML, unknown keys, bad values)."""
    import tomllib

    path = Path(path).expanduser().resolve()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"benchmark spec not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark spec {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    kwargs, unknown = {}, []
    for key, value in doc.items():
        if key in SCHEMA[""]:
            kwargs[SCHEMA[""][key]] = value
        elif key in SCHEMA and isinstance(value, dict):
            for sub, v in value.items():
                if sub in SCHEMA[key]:
                    kwargs[SCHEMA[key][sub]] = v
                else:
                    unknown.append(f"[{key}] {sub}")
        else:
            unknown.append(key)
    if unknown:
        known = "; ".join(f"[{s}] {', '.join(k)}" if s else ", ".join(k) for s, k in SCHEMA.items())
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {known})")
    missing = [f"[{s}] {k}" if s else k for s, keys in SCHEMA.items() for k, f in keys.items()
               if f in ("name", "kind", "table", "gt_column", "factory") and f not in kwargs]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}")
    base = path.parent
    for name in ("table", "checkpoint"):
        if isinstance(kwargs.get(name), str):
            kwargs[name] = _resolve(kwargs[name], base)
    if isinstance(kwargs.get("python_path"), list):
        kwargs["python_path"] = [_resolve(p, base) if isinstance(p, str) else p for p in kwargs["python_path"]]
    kind, sep, folder = str(kwargs.get("dataset", "")).partition("=")
    if sep and folder.strip():  # a dataset folder relative to the spec file, like the table
        kwargs["dataset"] = f"{kind}={_resolve(folder.strip(), base)}"
    return BenchmarkSpec(**kwargs, source=str(path))


# ------------------------------------------------------------------------------------- plug-in code

# Modules of this project that spec files written before they moved may name (old -> new dotted name).
MOVED_MODULES = {"mqbench.memory": "mqbench.bench.memory"}


def import_ref(ref: str, python_path=(), what: str = "factory"):
    """The callable named by ``package.module:function`` (its folders in ``python_path`` go first on sys.path).

    A module of this project named by its former path (:data:`MOVED_MODULES`) is imported from where it lives now."""
    check_ref(ref, what)
    for folder in reversed(python_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, attr = ref.split(":")
    module_name = MOVED_MODULES.get(module_name, module_name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f" (python_path {', '.join(python_path)})" if python_path else ""
        raise ConfigError(f"{what} {ref}: no module named {exc.name or module_name!r}{where}") from None
    except Exception as exc:
        raise ConfigError(f"{what} {ref}: importing {module_name} raised {one_line(exc)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"{what} {ref}: module {module_name} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{what} {ref}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def source_digest(fn) -> str:
    """sha256 (16 hex) of the file defining ``fn``, so a cache notices an edited factory."""
    import inspect

    from mqbench.data.dataroot import file_sha256

    try:
        return file_sha256(Path(inspect.getsourcefile(fn)))[:16]
    except (TypeError, OSError):
        return "nosource"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------- the table

@dataclass
class SpecTable:
    """A spec's CSV, validated: ids in file order, {id: row}, {id: CSV line}, numbers and bits per id."""

    path: Path
    ids: list
    rows: dict
    lines: dict
    truth: dict
    size: dict | None
    bits: dict | None

    def where(self, item) -> str:
        return f"{self.path.name} line {self.lines[item]} (id {item!r})"


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}, column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}, column {column!r}: {text!r} is not a finite number")
    return value


def _bits(texts: list[str], where: str, column: str) -> tuple[int, ...]:
    out = []
    for t in texts:
        if not _INT.fullmatch((t or "").strip()) or int(t) not in BIT_RANGE:
            raise DataError(f"{where}, column {column!r}: bit-width {t!r} is not an integer in "
                            f"{BIT_RANGE[0]}..{BIT_RANGE[-1]}")
        out.append(int(t))
    return tuple(out)


def read_table(path: Path, spec: BenchmarkSpec, gt_column: str) -> SpecTable:
    """The spec's table, every id, number and bit-width checked (one-line DataError naming line, id and column)."""
    header, records = read_csv_rows(path, "table")
    wanted = [c for c in (spec.id_column, gt_column, spec.size_column, spec.bits_column, *spec.bits_columns) if c]
    missing = [c for c in dict.fromkeys(wanted) if c not in header]
    if missing:
        raise DataError(f"table {path} has no column(s) {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(header) or 'none'})")
    if not records:
        raise DataError(f"table {path} has no rows")
    if spec.id_column is None:
        raw = [(lineno, index, row) for index, (lineno, row) in enumerate(records)]
    else:
        texts = [(row.get(spec.id_column) or "").strip() for _, row in records]
        numeric = all(_INT.fullmatch(t) for t in texts)
        raw = [(lineno, int(t) if numeric else t, row) for (lineno, row), t in zip(records, texts)]
    ids, rows, lines, truth = [], {}, {}, {}
    size = {} if spec.size_column else None
    bits = {} if spec.kind == "mq" else None
    for index, (lineno, item, row) in enumerate(raw):
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path.name} line {lineno}: number of fields differs from the header's {len(header)}")
        if item == "":
            raise DataError(f"{path.name} line {lineno}, column {spec.id_column!r}: empty id")
        if item in lines:
            raise DataError(f"{path.name} line {lineno}, column {spec.id_column!r}: duplicate id {item!r} "
                            f"(first on line {lines[item]})")
        where = f"{path.name} line {lineno} (id {item!r})"
        ids.append(item)
        rows[item], lines[item] = dict(row), lineno
        truth[item] = _number(row[gt_column], where, gt_column)
        if size is not None:
            size[item] = _number(row[spec.size_column], where, spec.size_column)
        if bits is not None:
            if spec.bits_column:
                bits[item] = _bits(row[spec.bits_column].split("-"), where, spec.bits_column)
            else:
                bits[item] = tuple(_bits([row[c]], where, c)[0] for c in spec.bits_columns)
    if spec.init_seed == "id" and spec.kind == "nas" and not all(isinstance(i, int) for i in ids):
        raise ConfigError(f"{spec.source or 'benchmark spec'}: init_seed = \"id\" needs integer ids in column "
                          f"{spec.id_column!r}; use init_seed = \"row\" or an integer")
    return SpecTable(path, ids, rows, lines, truth, size, bits)


# ------------------------------------------------------------------------------------- MQ helpers

def checkpoint_args(checkpoint, sha256: str | None, name: str) -> tuple:
    """``(path,)`` for the MQ factory (checked to exist and, with ``sha256``, to be that file), or ``()``."""
    if not checkpoint:
        return ()
    from mqbench.data.dataroot import file_sha256

    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} of benchmark {name} not found")
    if sha256 and file_sha256(ckpt) != sha256:
        raise DataError(f"checkpoint {ckpt} has sha256 {file_sha256(ckpt)}, benchmark {name} expects {sha256}")
    return (str(ckpt),)


def weights_digest(model) -> str:
    """sha256 (16 hex) over a model's state dict: names, then raw tensor bytes."""
    import hashlib

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def row_digest(row: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]


def full_bits(spec: BenchmarkSpec, bits: tuple[int, ...], n_layers: int, where: str) -> list[int]:
    """Weight bits of all ``n_layers`` layers: ``fixed_bits`` at ``fixed_layers``, the row's ``bits`` elsewhere."""
    bad = [i for i in spec.fixed_layers if not -n_layers <= i < n_layers]
    if bad:
        raise ConfigError(f"{spec.source or spec.name}: fixed_layers {bad} out of range for {n_layers} Conv2d/Linear layers")
    fixed = {i % n_layers for i in spec.fixed_layers}
    free = [i for i in range(n_layers) if i not in fixed]
    if len(bits) != len(free):
        column = spec.bits_column or ", ".join(spec.bits_columns)
        raise DataError(f"{where}, column {column!r}: {len(bits)} bit-widths for the {len(free)} layers "
                        f"not in fixed_layers")
    out = [spec.fixed_bits] * n_layers
    for i, b in zip(free, bits):
        out[i] = b
    return out
