"""``extract_many``: primitives of many networks on one batch, in parallel, with a disk cache.

Cache: one file ``<sha256>.pt`` per network under ``cache_dir`` (the CLI passes
``mqbench.data.dataroot.cache_root() / "primitives"``), holding ``NetworkStats.to_state()`` (plain
tensors/str/numbers), written atomically (temp file + ``os.replace``) and read back with
``torch.load(weights_only=True)``. The key hashes the item's repr, the model key, the batch seed,
a hash of the batch tensors' bytes, the resolved primitive names, the probes, max_elements,
float16, the bit configuration, seed, noise_std, threads, the quantizer and ``CODE_VERSION``, and the
device kind when it is not the CPU (``device="cuda"``: CUDA statistics differ from CPU ones at the
float32-rounding level, so they are never mixed; CPU keys are those of before devices existed). An
unreadable or corrupt file is ignored and recomputed (and overwritten).

Measured cache size (NAS-Bench-201 C=16 N=5, batch 64 of CIFAR-10, default names + hessian_*,
hutchinson_probes=4; the 10 architectures ``primitives.timing --archs 10 --seed 0`` picks, mean
0.42 M parameters; scaled x10 to 100 networks):

* ``max_elements=None``: 11.65 MB per network -> ~1.17 GB per 100 networks (five weight-shaped
  float32 tensors per layer dominate: W, G, G@noise, G@perturb, H);
* ``max_elements=4096, float16=True``: 2.93 MB per network -> ~0.29 GB per 100 networks.

Reloading 10 cached networks took ~0.8 s (vs ~70 s to compute them on the shared 2-core box).
Caveat on ``float16``: act_grad / fisher values (gradients of the *mean* loss, ~1e-6) are ~99.5%
float16 subnormals and ~2% flush to zero (measured on one NB201 network); weight_grad and
hessian_diag are fine (0% flushed).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Hashable, Sequence

import torch

from mqbench.devices import device_tag, resolve_device
from mqbench.errors import ConfigError
from primitives import core

def batch_hash(inputs: torch.Tensor, targets: torch.Tensor) -> str:
    """sha256 of the batch tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in (inputs, targets):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(item, model_key: str, batch_seed, batch_digest: str, kwargs: dict) -> str:
    """The cache key of one network (see the module docstring for what goes in)."""
    probes = int(kwargs.get("hutchinson_probes", 0))
    bit_config = kwargs.get("bit_config")
    names = core.resolve_names(kwargs.get("names"), probes, bit_config)
    if isinstance(bit_config, dict):
        bit_repr = sorted((str(k), int(v)) for k, v in bit_config.items())
    else:
        bit_repr = None if bit_config is None else [int(b) for b in bit_config]
    quantizer = kwargs.get("quantizer", core.simple_quantize)
    parts = (
        ("item", repr(item)), ("model_key", str(model_key)), ("batch_seed", repr(batch_seed)),
        ("batch", batch_digest), ("names", sorted(names)), ("probes", probes),
        ("max_elements", kwargs.get("max_elements")), ("float16", bool(kwargs.get("float16", False))),
        ("bit_config", bit_repr), ("seed", int(kwargs.get("seed", 0))),
        ("noise_std", float(kwargs.get("noise_std", 0.01))),
        ("threads", kwargs.get("threads", core.DEFAULT_THREADS)),
        ("channels_last", bool(kwargs.get("channels_last", True))),
        ("quantizer", core._quantizer_id(quantizer) if bit_config is not None else None),
        ("code", core.CODE_VERSION),
    )
    if probes > 0 and kwargs.get("hessian_method", "exact") != "exact":  # exact keeps its old keys
        parts += (("hessian_method", str(kwargs["hessian_method"]), core.FD_REL_STEP),)
    if device_tag(kwargs.get("device")) is not None:  # the CPU keeps its old keys; CUDA numbers are kept apart
        parts += (("device", device_tag(kwargs["device"])),)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _load(path: Path) -> core.NetworkStats | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return core.NetworkStats.from_state(state)
    except Exception:  # corrupt, truncated, foreign or old file: recompute
        return None


def _save(path: Path, stats: core.NetworkStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(stats.to_state(), fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _prepared(item, build, batch_seed, digest, cache_dir, kwargs):
    """(model, model_key, extract kwargs, device, cache key, cache path) of ``item`` (key and path None without a
    cache): what both the cache lookup and the extraction need."""
    built = build(item)
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        raise ConfigError(f"build({item!r}) must return (model, model_key) or (model, model_key, extract_kwargs)")
    model, model_key = built[0], built[1]
    kw = dict(kwargs)
    if len(built) == 3 and built[2]:
        kw.update(built[2])
    device = resolve_device(kw.pop("device", None))
    kw.setdefault("seed", batch_seed if isinstance(batch_seed, int) else 0)
    key = path = None
    if cache_dir is not None:
        key = cache_key(item, model_key, batch_seed, digest, {**kw, "device": device})
        path = Path(cache_dir) / f"{key}.pt"
    return model, model_key, kw, device, key, path


def _cached(path: Path | None, key: str | None) -> core.NetworkStats | None:
    """The statistics cached under ``path`` for ``key``, or None (no cache, no file, or a file to recompute)."""
    if path is None or not path.exists():
        return None
    stats = _load(path)
    return stats if stats is not None and stats.meta.get("cache_key") == key else None


def _lookup(item, build, batch_seed, digest, cache_dir, kwargs) -> core.NetworkStats | None:
    """``item``'s statistics from the disk cache, or None when they must be extracted."""
    *_, key, path = _prepared(item, build, batch_seed, digest, cache_dir, kwargs)
    return _cached(path, key)


def _one(item, build, inputs, targets, batch_seed, digest, cache_dir, kwargs) -> core.NetworkStats:
    model, model_key, kw, device, key, path = _prepared(item, build, batch_seed, digest, cache_dir, kwargs)
    stats = _cached(path, key)
    if stats is not None:
        return stats
    if device != "cpu":
        model = model.to(device)  # a freshly built network: moving it changes nobody else's
    stats = core.extract(model, inputs, targets, **kw)
    if device != "cpu":
        stats.meta["device"] = device_tag(device)
    stats.meta["item"] = repr(item)
    stats.meta["model_key"] = str(model_key)
    stats.meta["batch_seed"] = batch_seed if isinstance(batch_seed, (int, str)) or batch_seed is None else repr(batch_seed)
    if path is not None:
        stats.meta["cache_key"] = key
        _save(path, stats)
    return stats


def extract_many(items: Sequence[Hashable], build: Callable, batch, *, jobs: int = 1, cache_dir=None,
                 progress: bool = True, **extract_kwargs) -> list[core.NetworkStats]:
    """``extract`` for each item, in the order of ``items``; results do not depend on ``jobs``.

    ``build(item)`` (a top-level, picklable function) returns ``(model, model_key)`` or
    ``(model, model_key, extra_extract_kwargs)`` (e.g. a per-item ``bit_config``); ``model_key``
    names the weights (a checkpoint hash or ``f"init-seed-{s}"``). ``batch`` is
    ``(inputs, targets, batch_seed)``; ``seed`` defaults to ``batch_seed``. ``jobs`` > 1 runs
    joblib's loky processes; each extraction runs on ``threads`` torch threads (default
    ``DEFAULT_THREADS``), so results are bit-identical for any ``jobs``. With ``cache_dir`` a
    network already extracted with the same key is loaded instead of recomputed. ``device``
    (cpu | cuda | auto, default cpu) moves each built network there before extraction; the
    statistics come back as CPU tensors. With ``jobs`` > 1 the networks already cached are read in this
    process and only the others go to the workers (a worker reading them would pickle every tensor back
    through a pipe: 150 cached NAS-Bench-201 networks took about 50 s that way).
    """
    from mqbench.parallel import map_items

    inputs, targets, batch_seed = batch
    items = list(items)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    # validate the options once, up front, instead of in every worker
    resolve_device(extract_kwargs.get("device"))
    core.validate_bit_values(extract_kwargs.get("bit_config"))
    core.resolve_names(extract_kwargs.get("names"), int(extract_kwargs.get("hutchinson_probes", 0)),
                       extract_kwargs.get("bit_config"))
    digest = batch_hash(inputs, targets)
    inputs = inputs.detach().cpu().contiguous()
    targets = targets.detach().cpu().contiguous()
    found: list = [None] * len(items)
    if cache_dir is not None and jobs > 1:  # cached networks are read here: a worker would pickle them back to us
        from tqdm import tqdm

        found = [_lookup(item, build, batch_seed, digest, cache_dir, extract_kwargs)
                 for item in tqdm(items, desc="statistics (disk cache)", unit="net", disable=not progress)]
    todo = [i for i, st in enumerate(found) if st is None]
    made = map_items(_one, [items[i] for i in todo], (), (build, inputs, targets, batch_seed, digest, cache_dir,
                                                           extract_kwargs),
                     jobs=jobs, progress=progress and bool(todo), desc="statistics", unit="net")
    for i, st in zip(todo, made):
        found[i] = st
    return found

