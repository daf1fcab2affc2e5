"""A benchmark of your own from what you hold in memory: networks (or a factory and descriptions), or one
network and bit configurations, their accuracies and a batch of your data.

    bench = Benchmark.from_models(models, accuracies, inputs=x, targets=y)            # NAS: nn.Module list
    bench = Benchmark.from_models(make_net, descriptions, accuracies, inputs=x, targets=y)   # factory(description)
    bench = Benchmark.from_models(model, bit_configs, accuracies, inputs=x, targets=y)       # mixed precision
    spec = bench.save("my_bench")          # my_bench/spec.toml: evoproxy search --bench my_bench/spec.toml

The estimator (:class:`evoproxy.estimator.ProxySearch`) writes the same kind of spec into its run folder
(:func:`mqbench.bench.memory.write_spec`) and runs the ordinary search on it; the networks are taken from this
object (registered live in :mod:`mqbench.bench.memory`), one at a time, so no file or pickle is needed in the
session that fits. Networks are built one at a time (a deep copy, or ``factory(description)`` right after
``torch.manual_seed(init_seed)``, ``init_seed`` = the item's position unless given), put in ``mode``
(train for NAS, eval for MQ by default) and never moved: the user's models stay where they are.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import ConfigError
from mqbench.bench.spec import BIT_RANGE, one_line

DEFAULT_QUANTIZER = "mqbench.quant:quantize_weight"


def _accuracies(values, n: int, what: str) -> np.ndarray:
    try:
        acc = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("accuracies must be a list of numbers") from None
    if len(acc) != n:
        raise ConfigError(f"accuracies has {len(acc)} entries for {n} {what}")
    bad = [i for i, v in enumerate(acc) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"accuracy of item {bad[0]} is {acc[bad[0]]}; every accuracy must be a finite number "
                          f"({len(bad)} are not)")
    return acc


def _items(values, what: str) -> list:
    if isinstance(values, (str, bytes, torch.Tensor)) or not hasattr(values, "__len__"):
        raise ConfigError(f"{what} must be a list")
    values = list(values)
    if not values:
        raise ConfigError(f"{what} is empty: nothing to search on")
    return values


class Benchmark:
    """Items and accuracies held in memory (see the module docstring); ``kind`` is "nas" or "mq"."""

    def __init__(self, kind, accuracies, inputs, targets, *, models=None, factory=None, descriptions=None,
                 init_seeds=None, model=None, bit_configs=None, name="own", mode=None,
                 allowed_bits=tuple(BIT_RANGE), quantizer=DEFAULT_QUANTIZER):
        from mqbench.data.datasets import check_batch

        check_batch(inputs, targets, "inputs/targets")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string, got {name!r}")
        if mode not in (None, "train", "eval"):
            raise ConfigError(f"mode must be 'train' or 'eval', got {mode!r}")
        self.kind, self.name = kind, name
        self.mode = mode or ("train" if kind == "nas" else "eval")
        self.inputs, self.targets = inputs.detach(), targets.detach()
        self.models, self.factory, self.descriptions, self.model = models, factory, descriptions, model
        self.quantizer = quantizer
        if kind == "mq":
            self._layers = self._quant_layer_count()
            self.allowed_bits = self._allowed(allowed_bits)
            self.bit_configs = [self.check_bits(b, i) for i, b in enumerate(_items(bit_configs, "bit_configs"))]
            n = len(self.bit_configs)
        else:
            n = len(models) if models is not None else len(descriptions)
            seeds = list(range(n)) if init_seeds is None else list(init_seeds)
            if len(seeds) != n or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
                raise ConfigError(f"init_seeds must be {n} integers, one per description")
            self.init_seeds = [int(s) for s in seeds]
        self.accuracies = _accuracies(accuracies, n, "bit configurations" if kind == "mq" else "models")
        self._rows: dict[int, dict] = {}  # index -> params, weights_digest (filled by check())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_models(cls, first, *args, inputs=None, targets=None, **options) -> "Benchmark":
        """``(models, accuracies)``, ``(factory, descriptions, accuracies)`` or ``(model, bit_configs, accuracies)``;
        ``options``: ``name``, ``mode`` (train | eval), ``init_seeds`` (factory: one per description),
        ``allowed_bits`` and ``quantizer`` ("module:function") for bit configurations."""
        if inputs is None or targets is None:
            raise ConfigError("a benchmark needs a batch of your data: inputs=..., targets=...")
        if isinstance(first, torch.nn.Module):
            if len(args) != 2:
                raise ConfigError("one model: pass (model, bit_configs, accuracies)")
            return cls("mq", args[1], inputs, targets, model=first, bit_configs=args[0], **options)
        if callable(first) and not isinstance(first, (list, tuple)):
            if len(args) != 2:
                raise ConfigError("a factory: pass (factory, descriptions, accuracies)")
            descriptions = _items(args[0], "descriptions")
            return cls("nas", args[1], inputs, targets, factory=first, descriptions=descriptions, **options)
        if len(args) != 1:
            raise ConfigError("models: pass (models, accuracies), (factory, descriptions, accuracies) "
                              "or (model, bit_configs, accuracies)")
        models = _items(first, "models")
        bad = [i for i, m in enumerate(models) if not isinstance(m, torch.nn.Module)]
        if bad:
            raise ConfigError(f"models[{bad[0]}] is a {type(models[bad[0]]).__name__}, not a torch.nn.Module")
        return cls("nas", args[0], inputs, targets, models=models, **options)

    def __len__(self) -> int:
        return len(self.accuracies)

    def _allowed(self, allowed) -> tuple[int, ...]:
        allowed = tuple(sorted({int(b) for b in allowed}))
        if not allowed or any(b not in BIT_RANGE for b in allowed):
            raise ConfigError(f"allowed_bits must be bit-widths in {BIT_RANGE[0]}..{BIT_RANGE[-1]}, got {allowed}")
        return allowed

    def _quant_layer_count(self) -> int:
        from mqbench.quant.fakequant import quantizable_layers

        n = len(quantizable_layers(self.model))
        if n == 0:
            raise ConfigError(f"{type(self.model).__name__} has no Conv2d/Linear layer to quantize")
        return n

    def check_bits(self, bits, index=None) -> list[int]:
        """``bits`` as a list of ints, or a one-line ConfigError (wrong length, a bit-width not allowed)."""
        where = "bit configuration" if index is None else f"bit configuration {index}"
        try:
            out = [int(b) for b in bits]
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of integers, got {bits!r}") from None
        if len(out) != self._layers:
            raise ConfigError(f"{where} has {len(out)} bit-widths; the model has {self._layers} Conv2d/Linear layers")
        bad = [b for b in out if b not in self.allowed_bits]
        if bad:
            raise ConfigError(f"{where}: bit-width {bad[0]} not in the allowed set {list(self.allowed_bits)}")
        return out

    # ------------------------------------------------------------------ networks
    def network(self, index: int) -> torch.nn.Module:
        """Item ``index``'s network, fresh (a deep copy, or the factory's), in ``mode``."""
        import copy

        if self.models is not None:
            net = copy.deepcopy(self.models[index])
        else:
            torch.manual_seed(self.init_seeds[index])
            net = self.factory(self.descriptions[index])
            if not isinstance(net, torch.nn.Module):
                raise ConfigError(f"factory returned {type(net).__name__} for description {index}, not a torch.nn.Module")
        return net.train() if self.mode == "train" else net.eval()

    def fp_model(self) -> torch.nn.Module:
        import copy

        net = copy.deepcopy(self.model)
        return net.train() if self.mode == "train" else net.eval()

    def _try(self, net: torch.nn.Module) -> None:
        """One forward and backward pass on the batch (the extraction's loss), on a copy: raises what it raises."""
        import torch.nn.functional as F

        F.cross_entropy(net(self.inputs), self.targets).backward()

    def check(self, indices, progress: bool = False) -> dict[int, str]:
        """Build each item's network once (one at a time), run it on the batch, note its size and weights'
        digest; returns {index: reason} of those that fail (reported, left out by the caller)."""
        from tqdm import tqdm

        from mqbench.bench.memory import model_digest

        failed = {}
        if self.kind == "mq":
            with torch.random.fork_rng(devices=[]):
                try:
                    net = self.fp_model()
                    digest = model_digest(net)
                    self._try(net)
                except Exception as exc:
                    raise ConfigError(f"the model fails on the batch: {one_line(exc)}") from None
            self._rows[-1] = {"weights_digest": digest}
            return failed
        for i in tqdm(list(indices), desc="check", unit="net", file=sys.stderr, disable=not progress):
            if i in self._rows:
                continue
            with torch.random.fork_rng(devices=[]):
                try:
                    net = self.network(i)
                    digest, params = model_digest(net), sum(p.numel() for p in net.parameters())
                    self._try(net)
                except Exception as exc:
                    failed[i] = one_line(exc)
                    continue
            self._rows[i] = {"params": params, "weights_digest": digest}
        return failed

    # ------------------------------------------------------------------ spec files
    def rows(self, indices, live: bool, weights_dir: Path | None = None) -> list[dict]:
        """Table rows (see :data:`mqbench.bench.memory.NAS_COLUMNS`) of ``indices``, checked first."""
        from mqbench.bench.memory import importable_ref, register_live, save_weights

        if self.kind == "mq":
            return [{"id": i, "accuracy": repr(float(self.accuracies[i])), "bits": self.bit_configs[i]} for i in indices]
        ref = importable_ref(self.factory) if self.factory is not None else None
        out = []
        for i in indices:
            token = f"live-{self._rows[i]['weights_digest']}"
            if live:
                register_live(token, self, i)
            row = {"id": i, "accuracy": repr(float(self.accuracies[i])), "index": i, **self._rows[i],
                   "source": token if live else "", "init_seed": self.init_seeds[i] if self.factory else 0}
            if self.factory is not None and ref is not None:
                row.update(factory=ref[0], python_path=json.dumps(ref[1]),
                           description=json.dumps(self.descriptions[i], sort_keys=True))
            elif self.models is not None and weights_dir is not None:
                cls_ref = importable_ref(type(self.models[i]))
                weights = (weights_dir / f"{i}.pt").resolve()
                save_weights(self.models[i], weights)
                row.update({"class": cls_ref[0], "python_path": json.dumps(cls_ref[1]), "weights": str(weights)})
            out.append(row)
        return out

    def write(self, folder: Path, stem: str, indices, *, live: bool = True, search_fraction: float | None = None,
              split_seed: int = 0, weights_dir: Path | None = None, probes: int | None = None) -> Path:
        """``<folder>/<stem>.toml`` (+ ``.csv``, the batch, the MQ model descriptor) over ``indices``."""
        from mqbench.data.datasets import save_tensors
        from mqbench.bench.memory import SEARCH_ALL, importable_ref, register_live, save_weights, write_spec

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        batch_digest = hashlib.sha256(self.inputs.cpu().numpy().tobytes() + self.targets.cpu().numpy().tobytes())
        batch_file = f"batch-{batch_digest.hexdigest()[:16]}.pt"  # by content: the batch memo keys on the path
        if not (folder / batch_file).exists():
            save_tensors(folder / batch_file, self.inputs, self.targets)
        descriptor = None
        if self.kind == "mq":
            token = f"live-{self._rows[-1]['weights_digest']}"
            if live:
                register_live(token, self)
            doc = {"source": token if live else "", "weights_digest": self._rows[-1]["weights_digest"]}
            if weights_dir is not None:
                cls_ref = importable_ref(type(self.model))
                save_weights(self.model, folder / "fp.pt")
                doc.update({"class": cls_ref[0], "python_path": cls_ref[1], "weights": "fp.pt"})
            descriptor = f"{stem}-model.json"
            (folder / descriptor).write_text(json.dumps(doc, indent=2) + "\n")
        quantizer = self.quantizer
        if callable(quantizer):
            ref = importable_ref(quantizer)
            if ref is None:
                raise ConfigError("quantizer must be importable ('module:function' or a top-level function in a file)")
            quantizer = ref[0]
        return write_spec(folder, stem, name=self.name, kind=self.kind, rows=self.rows(indices, live, weights_dir),
                          batch_file=batch_file, batch=len(self.targets), mode=self.mode,
                          search_fraction=SEARCH_ALL if search_fraction is None else search_fraction,
                          split_seed=split_seed, descriptor=descriptor, quantizer=quantizer, hutchinson_probes=probes)

    def save(self, folder: str | Path, *, split_seed: int = 0, search_fraction: float = 0.1) -> Path:
        """Write every item as ``<folder>/spec.toml`` + ``spec.csv`` + the batch (+ weights), loadable by the CLI
        in another process: a factory must be importable (``module:function`` in a file), a network's class
        importable and buildable without arguments (its weights are saved). Returns the spec's path."""
        from mqbench.bench.memory import importable_ref

        folder = Path(folder)
        if self.kind == "nas" and self.factory is not None and importable_ref(self.factory) is None:
            raise ConfigError(f"factory {getattr(self.factory, '__qualname__', self.factory)!r} is not importable "
                              "from a file (a lambda, a nested function or a notebook cell); move it to a module")
        classes = [type(self.model)] if self.kind == "mq" else [] if self.factory else [type(m) for m in self.models]
        for cls in dict.fromkeys(classes):
            if importable_ref(cls) is None:
                raise ConfigError(f"class {cls.__qualname__} is not importable from a file; move it to a module "
                                  "(or pass a factory and descriptions)")
        for i, net in enumerate([self.model] if self.kind == "mq" else [] if self.factory else self.models):
            try:  # what the spec's factory will do in another process: build without arguments, load the weights
                type(net)().load_state_dict(net.state_dict())
            except Exception as exc:
                raise ConfigError(f"network {i} cannot be rebuilt as {type(net).__qualname__}() + its weights "
                                  f"({one_line(exc)[:160]}); pass a factory and descriptions instead") from None
        failed = self.check(range(len(self)))
        if failed:
            i, why = next(iter(failed.items()))
            raise ConfigError(f"item {i} fails on the batch: {why}")
        weights_dir = None if self.factory is not None and self.kind == "nas" else folder / "weights"
        if weights_dir is not None:
            weights_dir.mkdir(parents=True, exist_ok=True)
        return self.write(folder, "spec", range(len(self)), live=False, search_fraction=search_fraction,
                          split_seed=split_seed, weights_dir=weights_dir)
