"""CIFAR-100 from the official ``cifar-100-python`` folder (``train``, ``test``, ``meta``).

Each split file is a Python pickle of a dict with ``b"data"`` (a uint8 numpy array ``[N, 3072]``,
channel-major rows of 32x32 pixels), ``b"fine_labels"`` (100 classes) and ``b"coarse_labels"`` (20
superclasses); ``meta`` holds ``b"fine_label_names"``. The pickles are never unpickled freely: the
``data`` field *is* a numpy array, so a loader that refuses every global cannot read the official
files; :func:`mqbench.cifar10.read_pickled_dict` (its restricted unpickler) resolves exactly the three numpy globals an
array needs (``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other one with a one-line
:class:`DataError`, so no user code can run; the arrays must then be uint8 (an object array is
refused too). Nothing is kept in memory between calls (a caller that needs a batch more than once keeps
it: :class:`primitives.workspace.Workspace`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mqbench.cifar10 import read_pickled_dict
from mqbench.errors import ConfigError, DataError

SPLITS = ("train", "test")
NUM_CLASSES = 100
NORMALIZATION = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _unpickle(file: Path) -> dict:
    return read_pickled_dict(file, "CIFAR-100 file", " (expected the official cifar-100-python folder)")


def _field(obj: dict, name: str):
    return obj.get(name.encode(), obj.get(name))


def _read(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(file)
    data, labels = _field(obj, "data"), _field(obj, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"corrupt CIFAR-100 file {file}: 'data' is not a uint8 [N, 3072] array")
    if labels is None:
        raise DataError(f"corrupt CIFAR-100 file {file}: no {label_key!r}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"corrupt CIFAR-100 file {file}: {label_key!r} are not integers") from None
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{file} has {data.shape[0]} images but {labels.shape[0]} labels")
    limit = NUM_CLASSES if label_key == "fine_labels" else 20
    if labels.size and (labels.min() < 0 or labels.max() >= limit):
        raise DataError(f"{file} has {label_key} outside 0..{limit - 1}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels


def load_split(folder: str | os.PathLike, split: str, coarse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``[N, 3, 32, 32]``) and fine (or ``coarse``) labels (int64 ``[N]``) of ``split``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown CIFAR-100 split {split!r}; expected one of {', '.join(SPLITS)}")
    folder = Path(folder).expanduser().resolve()
    file = folder / split
    if not file.is_file():
        raise DataError(f"missing CIFAR-100 file {file} (expected the official cifar-100-python folder)")
    images, labels = _read(file, "coarse_labels" if coarse else "fine_labels")
    return torch.from_numpy(images), torch.from_numpy(labels)


def class_names(folder: str | os.PathLike) -> tuple[str, ...]:
    """The 100 fine class names from ``meta`` (their indices as text when ``meta`` is absent)."""
    meta = Path(folder).expanduser() / "meta"
    if not meta.is_file():
        return tuple(str(i) for i in range(NUM_CLASSES))
    names = _field(_unpickle(meta), "fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"corrupt CIFAR-100 file {meta}: 'fine_label_names' is not a list of {NUM_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)

