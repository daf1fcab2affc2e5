"""Benchmarks of networks a user holds in memory, written as ordinary spec files (:mod:`mqbench.bench.spec`).

    write_spec(folder, "search", name="my-cnns", kind="nas", rows=rows, batch_file="batch-1a2b.pt", ...)
    bench = mqbench.bench.benchmarks.get_benchmark(folder / "search.toml")     # a SpecBenchmark like any other

A spec written here names one of the two factories of this module; each table row (or, for
``kind = "mq"``, the JSON file the spec gives as its checkpoint) says where the network comes from:

* ``source``: a token of this process's live registry (:func:`register_live`, weak references: the owner
  is not kept alive by it): the network the user handed in (a fresh deep copy) or their factory called on
  the description. The token is ``live-<weights_digest>``, so a row's text depends on the network's content
  only. Only the process that registered it can use it;
* ``factory`` + ``description``: an importable ``module:function`` (``python_path`` folders first on
  ``sys.path``) called with the JSON-decoded description, after ``torch.manual_seed(init_seed)``;
* ``class`` + ``weights``: an importable ``nn.Module`` class built without arguments, then its saved
  ``state_dict`` (read with ``weights_only=True``) loaded.

The first that works is used. With none (a live row read in another process: the search's workers,
the CLI on a spec that ``fit`` wrote), :class:`Unavailable` stands in: the statistics cache finds the
network by its row without running it, and running it is a one-line error. ``weights_digest`` (sha256 of the network's weights and structure) is a
column, so a table row — and the statistics cache key built from it — names the network's content.
Nothing here is evaluated or unpickled: JSON, CSV, TOML and ``weights_only`` tensor files only.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
from pathlib import Path

import torch

from mqbench.errors import ConfigError, DataError

SEARCH_ALL = 1 - 1e-9  # a spec's search_fraction that puts every row in the search split (round(f * n) = n)
NAS_COLUMNS = ("id", "accuracy", "params", "index", "init_seed", "weights_digest", "source", "factory",
               "python_path", "description", "class", "weights")
_LIVE: dict[str, tuple] = {}  # token -> (weak reference to the owner, index)


def register_live(token: str, owner, index: int | None = None) -> None:
    """Make ``owner.network(index)`` (nas) or ``owner.fp_model()`` (mq, ``index`` None) reachable from spec rows
    naming ``token``, while ``owner`` lives."""
    import weakref

    _LIVE[token] = (weakref.ref(owner), index)


def _live(token: str):
    ref, index = _LIVE.get(token or "", (lambda: None, None))
    owner = ref()
    if owner is None:
        _LIVE.pop(token or "", None)
        return None
    return (lambda: owner.fp_model()) if index is None else (lambda: owner.network(index))


def model_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of a network's structure (its repr) and weights (state dict names and bytes)."""
    h = hashlib.sha256(repr(model).encode())
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()[:16]


def importable_ref(obj) -> tuple[str, list[str]] | None:
    """(``module:name``, python_path) under which another process can import ``obj`` (a function or class
    defined at a module's top level, in a file), or None (a lambda, a nested function, a notebook cell)."""
    name = getattr(obj, "__qualname__", "")
    if not name.isidentifier():  # nested ("f.<locals>.g"), a lambda, a method
        return None
    try:
        source = Path(inspect.getsourcefile(obj)).resolve()
    except (TypeError, OSError):
        return None
    if not source.is_file() or source.suffix != ".py":
        return None
    module = obj.__module__
    if module == "__main__":  # a script: its folder on the path, its stem as the module
        return (f"{source.stem}:{name}", [str(source.parent)]) if source.stem.isidentifier() else None
    parts = module.split(".")
    root = source.parent if source.stem != "__init__" else source.parent.parent
    for _ in parts[1:]:
        root = root.parent
    if any(not p.isidentifier() for p in parts):
        return None
    return f"{module}:{name}", [str(root)]


def _import(ref: str, python_path, what: str):
    from mqbench.bench.spec import import_ref

    return import_ref(ref, tuple(python_path), what)


def _seeded(fn, seed: int, *args):
    torch.manual_seed(int(seed))
    return fn(*args)


def _rebuild(cls_ref: str, python_path, weights: Path, where: str) -> torch.nn.Module:
    from mqbench.bench.spec import one_line

    cls = _import(cls_ref, python_path, "model class")
    try:
        model = cls()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise DataError(f"{where}: weights file {weights} not found") from None
    except Exception as exc:
        raise ConfigError(f"{where}: rebuilding {cls_ref} from {weights.name} failed: {one_line(exc)}") from None
    return model


def network(row: dict) -> torch.nn.Module:
    """The spec factory of ``kind = "nas"`` tables written by :func:`write_spec` (see the module docstring)."""
    where = f"in-memory benchmark item {row.get('index')}"
    live = _live(row.get("source"))
    if live is not None:
        return live()
    if row.get("factory"):
        fn = _import(row["factory"], json.loads(row.get("python_path") or "[]"), "factory")
        return _seeded(fn, int(row["init_seed"]), json.loads(row["description"]))
    if row.get("class") and row.get("weights"):
        return _rebuild(row["class"], json.loads(row.get("python_path") or "[]"), Path(row["weights"]), where)
    return Unavailable(where)


class Unavailable(torch.nn.Module):
    """Stands for a network that lives only in the session that fitted it (a search worker process, or the CLI
    on a spec written by ``fit``): enough for the statistics cache, which names networks by their row (a
    cached network is never run); running it is a one-line error."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where

    def named_modules(self, *args, **kwargs):  # what extraction (and parameters()) looks at first
        self.forward()

    def forward(self, *args):
        raise ConfigError(f"{self.where}: its network lives only in the Python session that fitted it and its "
                          "statistics are not in the cache; write the benchmark with evoproxy.Benchmark.save(...) "
                          "from that session to use it elsewhere")


def fp_model(descriptor: str) -> torch.nn.Module:
    """The spec factory of ``kind = "mq"``: ``descriptor`` is the spec's checkpoint, a JSON file naming the
    live model, or its class and saved weights."""
    path = Path(descriptor)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the model descriptor {path}: {exc}") from None
    live = _live(doc.get("source"))
    if live is not None:
        return live()
    if doc.get("class") and doc.get("weights"):
        return _rebuild(doc["class"], doc.get("python_path", []), path.parent / doc["weights"], str(path))
    raise ConfigError(f"{path}: the model lives only in the Python session that fitted it; write the benchmark "
                      f"with evoproxy.Benchmark.save(...) from that session to use it elsewhere")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, buf)
    path.write_bytes(buf.getvalue())


# ------------------------------------------------------------------------------------- writing

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string (JSON escapes are TOML escapes)


def write_table(path: Path, rows: list[dict], columns) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: row.get(c, "") for c in columns} for row in rows])
    from mqbench.fileio import atomic_write_text

    return atomic_write_text(path, buf.getvalue())


def write_spec(folder: Path, stem: str, *, name: str, kind: str, rows: list[dict], batch_file: str, batch: int,
               mode: str, search_fraction: float = SEARCH_ALL, split_seed: int = 0, descriptor: str | None = None,
               quantizer: str = "mqbench.quant:quantize_weight", act_bits: int = 8,
               hutchinson_probes: int | None = None) -> Path:
    """``<folder>/<stem>.toml`` and ``<stem>.csv``: a spec the CLI reads (``evoproxy search --bench``).

    ``rows``: nas: the :data:`NAS_COLUMNS`; mq: ``id``, ``accuracy``, ``bits`` (a list per row)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nas":
        write_table(folder / f"{stem}.csv", rows, NAS_COLUMNS)
    else:
        mq_rows = [{"id": r["id"], "accuracy": r["accuracy"], "bits": "-".join(map(str, r["bits"]))} for r in rows]
        write_table(folder / f"{stem}.csv", mq_rows, ("id", "accuracy", "bits"))
    lines = [f"# written by evoproxy (mqbench.bench.memory): {len(rows)} items", f"name = {_toml(name)}", f"kind = {_toml(kind)}",
             "", "[table]", f"path = {_toml(stem + '.csv')}", 'id_column = "id"', 'gt_column = "accuracy"']
    if kind == "nas":
        lines.append('size_column = "params"')
    lines += ["", "[model]", f"factory = {_toml('mqbench.bench.memory:network' if kind == 'nas' else 'mqbench.bench.memory:fp_model')}",
              f"mode = {_toml(mode)}"]
    if kind == "nas":
        lines.append("init_seed = 0  # the rows' init_seed column seeds each network (mqbench.bench.memory.network)")
    else:
        lines.append(f"checkpoint = {_toml(descriptor)}  # the FP model: mqbench.bench.memory.fp_model reads this file")
        lines += ["", "[bits]", 'column = "bits"', f"act_bits = {act_bits}", f"quantizer = {_toml(quantizer)}"]
    lines += ["", "[data]", f"dataset = {_toml('tensors=' + batch_file)}", "", "[protocol]", f"batch = {batch}",
              f"split_seed = {split_seed}", f"search_fraction = {search_fraction!r}"]
    if hutchinson_probes is not None:
        lines.append(f"hutchinson_probes = {hutchinson_probes}")
    from mqbench.fileio import atomic_write_text

    return atomic_write_text(folder / f"{stem}.toml", "\n".join(lines) + "\n")
