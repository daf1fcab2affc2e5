"""CIFAR-10 loading, caching, normalization and seeded sampling.

Four source layouts are understood (see ``load_split``):

* a ``.tar.gz``/``.tar`` archive holding ``train|test/<class>/*.jpg`` (optionally under one
  top-level directory), read as a stream without extracting anything to disk;
* the same tree extracted to a folder (``*.jpg`` or ``*.png``);
* the official ``cifar-10-batches-py`` folder (pickles, read with a restricted unpickler);
* the official ``cifar-10-batches-bin`` folder (1 label byte + 3072 pixel bytes per record).

Decoded splits are cached as ``.npy`` files under ``cache_root()/cifar10/``, keyed by a cheap
fingerprint of the source; nothing is kept in memory between calls (a caller that needs a batch
more than once keeps it: :class:`primitives.workspace.Workspace`). Images are uint8
``[N, 3, 32, 32]`` tensors, labels int64 ``[N]`` tensors.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from mqbench.errors import ConfigError, DataError
from mqbench.dataroot import cache_root, require

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SPLITS = ("train", "test")

_CLASS_INDEX = {name: index for index, name in enumerate(CLASSES)}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_GZIP_MAGIC = b"\x1f\x8b"
_RECORD_BYTES = 1 + 3 * 32 * 32
_CACHE_FORMAT = "cifar10-cache-v1"  # change to invalidate every existing cache file
_BATCH_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _oneline(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Decoding image trees (archive and folder)
# --------------------------------------------------------------------------------------------

def _is_image_name(name: str) -> bool:
    """Whether a file name looks like an image of the tree (hidden files excluded)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _IMAGE_SUFFIXES


def _member_parts(name: str) -> tuple[str, ...]:
    """The components of a tar member name, without empty and "." components."""
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _class_label(name: str, where: str) -> int:
    """The label of a class directory name, or a one-line DataError naming ``where``."""
    if name not in _CLASS_INDEX:
        raise DataError(f"unexpected class directory {name!r} ({where}); expected one of {', '.join(CLASSES)}")
    return _CLASS_INDEX[name]


def _label_for(rel: tuple[str, ...], split: str, where: str) -> int | None:
    """The label of the image at ``rel`` = (split, class, file), or None if it is in another split."""
    return _class_label(rel[1], where) if rel[0] == split else None


def _decode_image(blob: bytes, where: str) -> np.ndarray:
    """One encoded image as a uint8 HWC RGB array of shape (32, 32, 3)."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {where}: {_oneline(exc)}") from None
    if array.shape != (32, 32, 3):
        raise DataError(f"image {where} is {array.shape[1]}x{array.shape[0]}, expected 32x32")
    return array


def _decode_entries(entries: list[tuple[tuple[str, ...], int, bytes]], source: Path, split: str):
    """Decode (relative path, label, bytes) entries, sorted by path, to NCHW images and labels."""
    if not entries:
        raise DataError(f"no images for split {split!r} in {source} (expected {split}/<class>/*.jpg)")
    entries.sort(key=lambda entry: entry[0])
    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (rel, _, blob) in enumerate(entries):
        images[i] = _decode_image(blob, f"{'/'.join(rel)} in {source}")
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


@contextlib.contextmanager
def _tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open ``path`` (gzip-compressed or plain tar) as a forward-only tar stream.

    For gzip input the rest of the compressed stream is read after the body finishes, so that a
    truncated file or a CRC mismatch is reported even when the tar data happen to look complete.
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
        while stream.read(1 << 20):
            pass


def _read_archive(path: Path, split: str):
    """Images of ``split`` from a tar(.gz) archive of ``[<top>/]split/<class>/<image>`` members."""
    entries = []
    try:
        with _tar_stream(path) as tar:
            for member in tar:
                parts = _member_parts(member.name)
                if not member.isfile() or len(parts) not in (3, 4) or not _is_image_name(parts[-1]):
                    continue
                rel = parts[-3:]
                label = _label_for(rel, split, f"member {member.name} of {path}")
                if label is not None:
                    entries.append((rel, label, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"corrupt CIFAR-10 archive {path}: {_oneline(exc) or type(exc).__name__}") from None
    return _decode_entries(entries, path, split)


def _read_folder(path: Path, split: str):
    """Images of ``split`` from an extracted ``split/<class>/<image>`` folder tree."""
    split_dir = path / split
    entries = []
    if split_dir.is_dir():
        for class_dir in sorted(split_dir.iterdir()):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            label = _class_label(class_dir.name, f"folder {class_dir}")
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and _is_image_name(file.name):
                    entries.append(((split, class_dir.name, file.name), label, _read_bytes(file)))
    return _decode_entries(entries, path, split)


def _read_bytes(file: Path) -> bytes:
    """The contents of ``file``, or a one-line DataError."""
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {file}: {_oneline(exc.strerror or exc)}") from None


# --------------------------------------------------------------------------------------------
# Official batch formats
# --------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    """numpy's array-unpickling helper, wherever this numpy version keeps it."""
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a plain numpy array needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def __init__(self, file, source: Path):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise DataError(f"forbidden global {module}.{name} in pickle {self.source}; only numpy arrays are allowed")
        return resolve()




def _check_labels(labels: np.ndarray, count: int, where: Path) -> np.ndarray:
    """``labels`` as int64 after checking there are ``count`` of them, all in 0..9."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != count:
        raise DataError(f"{where} has {count} images but {labels.shape[0]} labels")
    if count and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{where} has labels outside 0..{len(CLASSES) - 1}")
    return labels


def read_pickled_dict(file: Path, what: str, missing_hint: str = "") -> dict:
    """The dict in an official CIFAR pickle, read by the restricted unpickler (numpy arrays only); a
    missing or corrupt file is a one-line DataError naming ``what``."""
    try:
        with open(file, "rb") as handle:
            obj = _RestrictedUnpickler(handle, file).load()
    except FileNotFoundError:
        raise DataError(f"missing {what} {file}{missing_hint}") from None
    except DataError:
        raise
    except Exception as exc:  # corrupt pickles can fail in many ways; all mean the same here
        raise DataError(f"corrupt {what} {file}: {_oneline(exc) or type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise DataError(f"corrupt {what} {file}: expected a dict, got {type(obj).__name__}")
    return obj


def _load_pickle_batch(file: Path):
    """(images NCHW uint8, labels int64) from one ``cifar-10-batches-py`` pickle."""
    batch = read_pickled_dict(file, "CIFAR-10 batch file")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"corrupt CIFAR-10 batch file {file}: 'data' is not a uint8 [N, 3072] array")
    if labels is None:
        raise DataError(f"corrupt CIFAR-10 batch file {file}: no 'labels'")
    return data.reshape(-1, 3, 32, 32), _check_labels(labels, data.shape[0], file)


def _load_binary_batch(file: Path):
    """(images NCHW uint8, labels int64) from one ``cifar-10-batches-bin`` file."""
    try:
        raw = np.fromfile(file, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 batch file {file}") from None
    except OSError as exc:
        raise DataError(f"cannot read {file}: {_oneline(exc.strerror or exc)}") from None
    if raw.size == 0 or raw.size % _RECORD_BYTES:
        raise DataError(f"corrupt CIFAR-10 batch file {file}: {raw.size} bytes is not a multiple of {_RECORD_BYTES}")
    records = raw.reshape(-1, _RECORD_BYTES)
    labels = _check_labels(records[:, 0], records.shape[0], file)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_batches(load_batch, suffix: str):
    """A reader for a folder of batch files, given the per-file loader and the file suffix."""
    def read(path: Path, split: str):
        parts = [load_batch(path / f"{name}{suffix}") for name in _BATCH_FILES[split]]
        images = np.ascontiguousarray(np.concatenate([images for images, _ in parts]))
        return images, np.concatenate([labels for _, labels in parts])
    return read


_READERS = {
    "archive": _read_archive,
    "folder": _read_folder,
    "batches-py": _read_batches(_load_pickle_batch, ""),
    "batches-bin": _read_batches(_load_binary_batch, ".bin"),
}


def _source_kind(path: Path) -> str:
    """Which reader of ``_READERS`` handles ``path`` (decided from what is there, not its name)."""
    if path.is_file():
        return "archive"
    for kind, suffix in (("batches-py", ""), ("batches-bin", ".bin")):
        if any((path / f"{name}{suffix}").is_file() for name in ("data_batch_1", "test_batch")):
            return kind
    return "folder"


# --------------------------------------------------------------------------------------------
# Source resolution and the on-disk cache
# --------------------------------------------------------------------------------------------

def _resolve_source(source: str | os.PathLike | None) -> Path:
    """The absolute path of the source: ``source`` if given, else the data root's CIFAR-10."""
    path = require("cifar10") if source is None else Path(source).expanduser()
    if not path.exists():
        raise DataError(f"CIFAR-10 source not found: {path}")
    return path.resolve()


def _files_under(path: Path) -> Iterator[tuple[str, str]]:
    """(relative name, full path) of every file under ``path``, in a deterministic order."""
    if path.is_file():
        yield path.name, str(path)
        return
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        rel = os.path.relpath(folder, path)
        for name in sorted(names):
            yield os.path.join(rel, name), os.path.join(folder, name)


def _fingerprint(path: Path) -> str:
    """A cheap content key: path, size and mtime of a file, or of every file under a folder."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\n{path}\n".encode())
    for rel, full in _files_under(path):
        stat = os.stat(full)
        digest.update(f"{rel}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _cache_files(path: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) cache file paths for this source and split, or None without a cache dir."""
    try:
        folder = cache_root() / "cifar10"
        folder.mkdir(parents=True, exist_ok=True)
    except (DataError, OSError) as exc:
        warnings.warn(f"CIFAR-10 cache disabled: {_oneline(exc)}", stacklevel=4)
        return None
    stem = f"{split}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}-{_fingerprint(path)}"
    return folder / f"{stem}.images.npy", folder / f"{stem}.labels.npy"


def _read_cache(images_file: Path, labels_file: Path):
    """Cached (images, labels) arrays, or None when missing, unreadable or inconsistent."""
    try:
        images = np.load(images_file, allow_pickle=False)
        labels = np.load(labels_file, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (3, 32, 32)
          and labels.dtype == np.int64 and labels.shape == images.shape[:1])
    return (images, labels) if ok else None


def _atomic_save(file: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``file`` through a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache should stay readable
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_cache(images_file: Path, labels_file: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Store a decoded split (labels first: a lone labels file is never taken for a hit) and drop
    older caches of the same source and split."""
    try:
        _atomic_save(labels_file, labels)
        _atomic_save(images_file, images)
    except OSError as exc:
        warnings.warn(f"could not write CIFAR-10 cache {images_file}: {_oneline(exc)}", stacklevel=4)
        return
    source_prefix = images_file.name.rsplit("-", 1)[0] + "-"
    for old in images_file.parent.glob(f"{source_prefix}*.npy"):
        if old not in (images_file, labels_file):
            with contextlib.suppress(OSError):
                old.unlink()


def _load_or_decode(path: Path, split: str):
    """(images, labels) numpy arrays from the disk cache, or decoded from the source and cached."""
    cache = _cache_files(path, split)
    cached = _read_cache(*cache) if cache else None
    if cached is not None:
        return cached
    images, labels = _READERS[_source_kind(path)](path, split)
    if cache:
        _write_cache(*cache, images, labels)
    return images, labels


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown CIFAR-10 split {split!r}; expected one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_split(split: str, source: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``[N, 3, 32, 32]``) and labels (int64 ``[N]``) of ``split`` ("train"/"test").

    ``source`` is an archive, an extracted folder tree, or an official batches folder; None means
    the data root's CIFAR-10 (``require("cifar10")``). Order is deterministic (sorted by path for
    image trees, file order for batches). Read from the disk cache when it holds the split.
    """
    _check_split(split)
    images, labels = _load_or_decode(_resolve_source(source), split)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _stats(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) tensors shaped [3, 1, 1] for a ``NORMALIZATION`` name."""
    if name not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {name!r}; expected one of {', '.join(NORMALIZATION)}")
    mean, std = NORMALIZATION[name]
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


def normalize(images: torch.Tensor, stats: str = "cifar10") -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` to float32: scaled to [0, 1], then (x - mean) / std per channel."""
    mean, std = _stats(stats)
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ConfigError(f"normalize expects uint8 images [..., 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def sample_indices(labels, n: int, seed: int, balanced: bool = True) -> torch.Tensor:
    """``n`` distinct indices into ``labels``, chosen and ordered by ``seed`` (a LongTensor).

    balanced=True: every class gets ``n // 10`` items and the first ``n % 10`` classes of a seeded
    class order one more, each class's items drawn by a seeded permutation; the selection is then
    shuffled. balanced=False: the first ``n`` of a seeded permutation of all indices.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if not 0 <= n <= labels.numel():
        raise ConfigError(f"cannot sample {n} images from {labels.numel()}")
    generator = torch.Generator().manual_seed(int(seed))
    if not balanced:
        return torch.randperm(labels.numel(), generator=generator)[:n]
    counts = torch.full((len(CLASSES),), n // len(CLASSES), dtype=torch.int64)
    counts[torch.randperm(len(CLASSES), generator=generator)[: n % len(CLASSES)]] += 1
    chosen = []
    for label, count in enumerate(counts.tolist()):
        members = torch.nonzero(labels == label).flatten()
        if count > members.numel():
            raise ConfigError(f"cannot sample {count} images of class {CLASSES[label]!r}: only {members.numel()}")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    selection = torch.cat(chosen)
    return selection[torch.randperm(selection.numel(), generator=generator)]


def sample_batch(split: str, n: int, seed: int, balanced: bool = True, normalization: str = "cifar10",
                 source: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of ``split``: normalized float32 images ``[n, 3, 32, 32]`` and int64 labels ``[n]``."""
    _stats(normalization)
    images, labels = load_split(split, source)
    index = sample_indices(labels, n, seed, balanced)
    return normalize(images[index], normalization), labels[index]


def iterate_split(split: str, batch_size: int = 1000, normalization: str = "cifar10",
                  source: str | os.PathLike | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized (x, y) batches covering the whole split in order (arguments are checked at call time)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    _stats(normalization)
    images, labels = load_split(split, source)

    def batches():
        for start in range(0, labels.numel(), batch_size):
            stop = start + batch_size
            yield normalize(images[start:stop], normalization), labels[start:stop]

    return batches()
