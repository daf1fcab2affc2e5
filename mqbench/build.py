"""Build an MQ-Bench table: sampled bit configurations of a pretrained network -> PTQ top-1.

One CSV row per configuration (``TABLE_COLUMNS``), appended with a single write + fsync each, plus
a ``<table>.meta.json`` sidecar with everything that defines the table. Killing the build at any
moment and re-running the same command continues where it stopped: a torn last line is cut off,
finished indices are skipped, and a table built with other options is refused.

Rows are written only by the calling process, as the workers' results arrive (joblib's loky
processes or a Dask cluster, see :mod:`mqbench.parallel`): a worker killed mid-build loses nothing
(the backend re-runs its task) and duplicates nothing. A ``<table>.lock`` file refuses a second
build of the same table while one runs (:class:`mqbench.fileio.FileLock`).

Models and data (:mod:`mqbench.buildcontext`): the CIFAR ResNets on CIFAR-10 (the committed tables),
and the ImageNet networks (``resnet18``, ``resnet50``, ``mobilenet_v2``, torchvision checkpoints) on
any dataset reference, e.g. ``imagenet=/data/ILSVRC2012`` for an MQ-Bench-101-style table (W{2,3,4}A8,
first and last layer at 8 bit). Settings the committed tables lack (``dataset`` other than CIFAR-10,
ImageFolder ``preprocess``, a non-CPU ``device``) enter the identity only when set, so those tables
resume and verify unchanged.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mqbench.buildcontext import (FOLDER_KINDS, Images, check_data, data_kind, folder_fp_accuracy, image_shape,
                                  load_model, model_entry, ptq_accuracy)
from mqbench.devices import device_tag, resolve_device
from mqbench.errors import ConfigError, DataError
from mqbench.fileio import FileLock, append_line, atomic_write_text, complete_lines, has_torn_tail, make_folder
from mqbench.imagefolder import Preprocess
from mqbench.parallel import Setup
from mqbench.ptq import PTQSettings, fp_top1
from mqbench.quant import BitLayout, bops, default_bit_layout, layer_macs, model_size_mb, quantizable_layers

TABLE_COLUMNS = ("index", "kind", "bits", "top1", "size_mb", "bops_g", "calib_seed", "fp_sha256", "seconds")
ANCHOR_BITS = (2, 3, 4, 8)
META_SUFFIX = ".meta.json"
# Keys of the metadata that must agree for a table to be resumed.
IDENTITY_KEYS = ("model", "checkpoint_sha256", "layer_names", "searchable", "fixed_bits", "act_bits",
                 "allowed", "seed", "ptq", "normalization", "format", "dataset", "preprocess", "device", "anchors")
FORMAT = "mqbench-table/1"


def bits_to_str(bits) -> str:
    return "-".join(str(int(b)) for b in bits)


def bits_from_str(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split("-"))
    except ValueError:
        raise ConfigError(f"bad bit configuration {text!r}: expected bit-widths joined by '-', e.g. 4-3-2") from None


def sample_configs(n: int, n_layers: int, allowed: tuple[int, ...], seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct configurations drawn uniformly from allowed^n_layers, never a uniform one.

    Drawn one after another from one seeded generator, so the first k of a larger draw equal a
    draw of k (tables of different sizes share their prefix).
    """
    space = len(allowed) ** n_layers - len(allowed)
    if n > space:
        raise ConfigError(f"asked for {n} distinct configurations but only {space} non-uniform ones exist")
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    choices = np.asarray(allowed)
    while len(out) < n:
        cfg = tuple(int(b) for b in choices[rng.integers(0, len(allowed), size=n_layers)])
        if cfg in seen or len(set(cfg)) == 1:
            continue
        seen.add(cfg)
        out.append(cfg)
    return out


def parse_anchors(text: str) -> tuple[int, ...]:
    """``"2,3,4,8"`` -> (2, 3, 4, 8); ``"none"`` -> () (the ``--anchors`` option)."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--anchors must be bit-widths joined by commas (e.g. 2,3,4,8) or 'none', got {text!r}") from None


def planned_rows(layout: BitLayout, configs: int, seed: int,
                 anchors: tuple[int, ...] = ANCHOR_BITS) -> list[tuple[int, str, tuple[int, ...]]]:
    """(index, kind, searchable bits) for the anchors (uniform 2/3/4/8 by default) then the sampled configs."""
    n_layers = len(layout.searchable)
    rows = [(i, "anchor", (int(b),) * n_layers) for i, b in enumerate(anchors)]
    start = len(rows)
    rows += [(start + i, "sample", cfg) for i, cfg in enumerate(sample_configs(configs, n_layers, layout.allowed, seed))]
    return rows


@dataclass(frozen=True)
class BuildJob:
    """What a worker needs to evaluate configurations (picklable, hashable: the :class:`mqbench.parallel.Setup`
    of :func:`build_context`, so each process loads the model and the data once)."""

    model: str
    checkpoint: str
    normalization: str
    data_source: str | None  # CIFAR-10 source when ``data`` is None
    ptq: PTQSettings
    threads: int | None  # torch threads in a worker process; None: leave the caller's setting
    data: str | None = None  # dataset reference (mqbench.datasets) other than CIFAR-10
    device: str | None = None  # None: the CPU, as before devices existed
    preprocess: Preprocess | None = None  # ImageFolder resize/crop (None: 256/224)


def build_context(job: BuildJob) -> tuple:
    """(FP model, :class:`mqbench.buildcontext.Images`) of ``job``: what a process evaluating its configurations
    loads once (the state of ``job_setup(job)``)."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    return load_model(job.model, job.checkpoint, job.data), Images(job.data, job.data_source, job.normalization,
                                                                    job.ptq, job.preprocess)


def job_setup(job: BuildJob) -> Setup:
    """The per-process state of ``job`` (:func:`build_context`, built once per process)."""
    return Setup(build_context, (job,))


def evaluate_config(job: BuildJob, full_bits: list[int]) -> tuple[float, float]:
    """(top-1 %, seconds) of one configuration, in the calling process (its model and data loaded once per
    process, :func:`job_setup`)."""
    return _evaluate(job_setup(job).state(), job, full_bits)


def _evaluate(context: tuple, job: BuildJob, full_bits: list[int]) -> tuple[float, float]:
    fp_model, images = context
    start = time.perf_counter()
    acc = ptq_accuracy(fp_model, full_bits, images, job.ptq, device=job.device)
    return acc, time.perf_counter() - start


def _evaluate_row(context: tuple, job: BuildJob, index: int, kind: str, full_bits: list[int]):
    acc, seconds = _evaluate(context, job, full_bits)
    return index, kind, acc, seconds


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a table CSV; a torn last line is cut off when ``repair`` (else it is an error)."""
    if not repair and has_torn_tail(path):
        raise DataError(f"table {path} ends with an incomplete row; re-run the build to repair it")
    lines = complete_lines(path)
    if not lines:
        return []
    header = tuple(lines[0].split(","))
    if header != TABLE_COLUMNS:
        raise DataError(f"table {path} has columns {','.join(header)}, expected {','.join(TABLE_COLUMNS)}")
    rows, seen = [], set()
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split(",")
        if len(parts) != len(TABLE_COLUMNS):
            raise DataError(f"table {path} line {lineno}: {len(parts)} fields, expected {len(TABLE_COLUMNS)}")
        row = dict(zip(TABLE_COLUMNS, parts))
        try:
            row["index"] = int(row["index"])
            row["bits"] = bits_from_str(row["bits"])
            for key in ("top1", "size_mb", "bops_g", "seconds"):
                row[key] = float(row[key])
            row["calib_seed"] = int(row["calib_seed"])
        except (ValueError, ConfigError) as exc:
            raise DataError(f"table {path} line {lineno}: {exc}") from None
        if row["index"] in seen:
            raise DataError(f"table {path} line {lineno}: duplicate index {row['index']}")
        seen.add(row["index"])
        rows.append(row)
    return rows


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def build_table(model: str, configs: int, seed: int, out: str | Path, *, jobs: int = 1,
                checkpoint: str | Path | None = None, ptq: PTQSettings = PTQSettings(),
                data_source: str | None = None, keep_first_last: bool = True,
                allowed: tuple[int, ...] = (2, 3, 4), progress: bool = True,
                limit: int | None = None, data: str | None = None, device: str | None = None,
                preprocess: Preprocess | None = None, anchors: tuple[int, ...] = ANCHOR_BITS) -> Path:
    """Build (or resume) the table at ``out``; returns its path. ``limit`` stops after that many new rows.

    ``model``: a name of :mod:`mqbench.buildcontext`'s registry (CIFAR ResNets, ``resnet18``,
    ``resnet50``, ``mobilenet_v2``; ``checkpoint`` defaults to the data root's file). ``data``: a dataset reference
    (:mod:`mqbench.datasets`, e.g. ``"imagenet=/data/ILSVRC2012"``; None: CIFAR-10 from ``data_source``).
    ``preprocess``: resize/crop of ImageFolder images (default 256/224). ``device``: cpu (default),
    cuda or auto (:mod:`mqbench.devices`; a non-CPU device enters the table's identity). ``anchors``: the
    uniform bit-widths whose rows come first (MQ-Bench-101 itself has none: ``()``).
    ``jobs`` > 1 evaluates configurations in worker processes of the current backend
    (:func:`mqbench.parallel.use_backend`); the table does not depend on either."""
    model_entry(model)
    anchors = tuple(int(b) for b in anchors)
    bad = [b for b in anchors if b not in range(2, 9)]
    if bad or len(set(anchors)) != len(anchors):
        raise ConfigError(f"anchors must be distinct bit-widths in 2..8, got {','.join(map(str, anchors))}")
    device = None if resolve_device(device) == "cpu" else resolve_device(device)
    if data is not None and data_kind(data) == "cifar10":  # the pre-datasets path reads CIFAR-10 exactly so
        from mqbench.datasets import parse_dataset

        path = parse_dataset(data).path
        data, data_source = None, (str(path) if path is not None else data_source)
    if preprocess is not None and (data is None or data_kind(data) not in FOLDER_KINDS):
        raise ConfigError("--resize/--crop apply to ImageFolder datasets only")
    if data is not None and data_kind(data) in FOLDER_KINDS and preprocess is None:
        preprocess = Preprocess()
    check_data(data)
    out = Path(out)
    make_folder(out.parent, f"table {out}")
    with FileLock(out.with_name(out.name + ".lock"), f"table {out}"):
        return _build_locked(model, configs, seed, out, jobs, checkpoint, ptq, data_source, keep_first_last,
                             allowed, progress, limit, data, device, preprocess, anchors)


def _identity(model: str, fp_model, layout: BitLayout, seed: int, ptq: PTQSettings, data, device, preprocess,
              anchors=ANCHOR_BITS) -> dict:
    """The metadata that must agree to resume; keys absent from the committed CIFAR-10 CPU tables are added
    only when they differ from those tables' settings (so their identity is unchanged)."""
    identity = {
        "format": FORMAT, "model": model, "checkpoint_sha256": fp_model.checkpoint_sha256,
        "layer_names": list(layout.layer_names), "searchable": list(layout.searchable),
        "fixed_bits": layout.fixed_bits, "act_bits": layout.act_bits, "allowed": list(layout.allowed),
        "seed": seed, "ptq": ptq.as_dict(), "normalization": fp_model.normalization,
    }
    if data is not None:
        identity["dataset"] = data_kind(data)
    if preprocess is not None:
        identity["preprocess"] = {"resize": preprocess.resize, "crop": preprocess.crop}
    if device is not None:
        identity["device"] = device_tag(device)
    if tuple(anchors) != ANCHOR_BITS:
        identity["anchors"] = list(anchors)
    return identity


def _build_locked(model, configs, seed, out: Path, jobs, checkpoint, ptq, data_source, keep_first_last, allowed,
                  progress, limit, data=None, device=None, preprocess=None, anchors=ANCHOR_BITS) -> Path:
    from tqdm import tqdm

    from mqbench.dataroot import require
    from mqbench.parallel import current_backend, map_unordered

    if checkpoint is None and model_entry(model).family == "cifar":
        checkpoint = require(model)
    fp_model = load_model(model, checkpoint, data)
    checkpoint = Path(fp_model.checkpoint_path)
    normalization = fp_model.normalization
    layout = default_bit_layout(fp_model, keep_first_last=keep_first_last, allowed=tuple(allowed), act_bits=ptq.act_bits)
    meta_path = out.with_name(out.name + META_SUFFIX)
    layers = quantizable_layers(fp_model)
    identity = _identity(model, fp_model, layout, seed, ptq, data, device, preprocess, anchors)
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"table metadata {meta_path} is not valid JSON ({exc})") from None
        diff = [k for k in IDENTITY_KEYS if old.get(k) != identity.get(k)]
        if diff:
            raise ConfigError(f"{out} was built with other settings ({', '.join(diff)} differ); use another --out or the same options")
        meta = old
        if "checkpoint" in meta:  # older tables stored the building machine's absolute path
            del meta["checkpoint"]
            meta["checkpoint_file"] = checkpoint.name
    else:
        header_only = out.exists() and out.read_bytes() in (b"", (",".join(TABLE_COLUMNS) + "\n").encode())
        if out.exists() and not header_only:
            raise DataError(f"{out} exists without its metadata {meta_path.name}; move it away or pass another --out")
        meta = dict(identity)
        meta.update({
            "checkpoint_file": checkpoint.name, "layer_params": [m.weight.numel() for _, m in layers],
            "layer_bias": [m.bias.numel() if m.bias is not None else 0 for _, m in layers],
            "layer_macs": layer_macs(fp_model, image_shape(data, preprocess)),
        })
    plan = planned_rows(layout, configs, seed, anchors)
    rows = read_rows(out, repair=True)
    planned = {i: (kind, cfg) for i, kind, cfg in plan}
    for row in rows:
        if row["index"] in planned and planned[row["index"]][1] != row["bits"]:
            raise DataError(f"{out}: row {row['index']} holds bits {bits_to_str(row['bits'])}, but seed {seed} plans {bits_to_str(planned[row['index']][1])}")
    # The metadata goes down before the first byte of the CSV: a kill at any later moment
    # leaves a table that the same command resumes.
    _write_json_atomic(meta_path, meta)
    if not out.exists() or out.stat().st_size == 0:
        append_line(out, ",".join(TABLE_COLUMNS) + "\n")
    done = {row["index"] for row in rows}
    todo = [(i, kind, cfg) for i, kind, cfg in plan if i not in done]
    if limit is not None:
        todo = todo[:limit]

    if "fp_top1" not in meta:
        images = Images(data, data_source, normalization, ptq, preprocess, jobs=max(1, int(jobs)))
        if images.in_memory:
            test_x, test_y = images.test
            meta["fp_top1"] = fp_top1(fp_model, None, test_x, test_y, ptq, device=device)
            meta["fp_bn_top1"] = fp_top1(fp_model, images.calib, test_x, test_y, ptq, device=device)
        else:
            meta["fp_top1"] = folder_fp_accuracy(fp_model, images, ptq, reestimate=False, device=device)
            meta["fp_bn_top1"] = folder_fp_accuracy(fp_model, images, ptq, reestimate=True, device=device)
            meta["eval_images"] = images.counted
    meta["configs"] = max(meta.get("configs", 0), configs)
    _write_json_atomic(meta_path, meta)

    jobs = max(1, int(jobs))
    job = BuildJob(model, str(checkpoint), normalization, data_source, ptq,
                   threads=current_backend().worker_threads(jobs) if jobs > 1 else None,
                   data=data, device=device, preprocess=preprocess)
    tasks = [(job, i, kind, layout.full_config(cfg)) for i, kind, cfg in todo]
    by_index = {i: cfg for i, _, cfg in todo}
    wall = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"PTQ {model}", unit="cfg", disable=not progress, dynamic_ncols=True)
    try:
        for index, kind, acc, seconds in map_unordered(_evaluate_row, tasks, jobs=jobs, setup=job_setup(job)):
            cfg = by_index.pop(index, None)
            if cfg is None:  # never twice, whatever a backend delivers
                continue
            full = layout.full_config(cfg)
            size = model_size_mb(meta["layer_params"], meta["layer_bias"], full)
            bop = bops(meta["layer_macs"], full, layout.act_bits) / 1e9
            append_line(out, f"{index},{kind},{bits_to_str(cfg)},{acc:.2f},{size:.6f},{bop:.6f},{ptq.calib_seed},{fp_model.checkpoint_sha256[:16]},{seconds:.3f}\n")
            bar.update(1)
    finally:
        bar.close()
    meta.setdefault("build_wall_s", 0.0)
    meta["build_wall_s"] = round(meta["build_wall_s"] + time.perf_counter() - wall, 1)
    _write_json_atomic(meta_path, meta)
    return out
