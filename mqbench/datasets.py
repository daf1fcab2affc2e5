"""One entry point for every image dataset: a dataset reference -> seeded, class-balanced batches.

A dataset reference (:class:`DatasetRef`, written as a string): ``KIND`` or ``KIND=PATH``.

=============== ============================================ ====================================
kind            PATH (default: the data-root item)          splits
=============== ============================================ ====================================
``cifar10``     any source ``mqbench.cifar10`` reads          ``train``, ``test``
                (default ``cifar10/cifar10-jpg.tar.gz``, ...)
``cifar100``    the official ``cifar-100-python`` folder      ``train``, ``test``
                (default ``cifar100/cifar-100-python``)
``imagenet``    an ImageFolder root (default ``imagenet/``)   the sub-folders: ``train``, ``val``
``imagefolder`` an ImageFolder root (PATH required)           the sub-folders: ``train``, ``val``
``tensors``     a saved batch (PATH required), written by    any (one batch)
                :func:`save_tensors`
=============== ============================================ ====================================

e.g. ``"cifar10"``, ``"cifar100=/data/cifar-100-python"``, ``"imagenet=/data/ILSVRC2012"``,
``"imagefolder=~/my-tree"``. ImageFolder trees (``imagenet``/``imagefolder``) get the standard
ImageNet evaluation preprocessing (see :mod:`mqbench.imagefolder`) and the ImageNet mean/std;
CIFAR images stay 32x32 and get their dataset's mean/std. A ``tensors`` file is a batch a user already
holds (``{"inputs": float tensor [N, ...], "targets": int64 [N]}``, read with ``weights_only=True``):
used as it is (no normalization, no shuffle; ``n`` < N takes the first ``n``); it is how an in-memory
benchmark (:mod:`mqbench.memory`) hands its batch to the search's worker processes and to the CLI.

Unreadable images of an ImageFolder tree: by default each is skipped and replaced by the next
image of the same class in the seeded order (the batch keeps its size and balance), and one line on
stderr gives the count and the first file and reason; with ``strict=True`` the first one is a
one-line :class:`DataError` naming the file.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mqbench import cifar10, cifar100, imagefolder
from mqbench.errors import ConfigError, DataError
from mqbench.imagefolder import Preprocess
from mqbench.sampling import plan_sample, select

NORMALIZATION = {**cifar10.NORMALIZATION, "cifar100": cifar100.NORMALIZATION}


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset the registry knows."""

    name: str
    item: str | None  # the mqbench.dataroot item that is the default source (None: PATH required)
    splits: tuple[str, ...] | None  # None: whichever split folders the tree has
    normalization: str  # key of NORMALIZATION
    what: str


DATASETS: dict[str, DatasetKind] = {k.name: k for k in (
    DatasetKind("cifar10", "cifar10", cifar10.SPLITS, "cifar10",
                "CIFAR-10 (JPEG tree/archive or the official batches), 32x32"),
    DatasetKind("cifar100", "cifar100", cifar100.SPLITS, "cifar100",
                "CIFAR-100 (official cifar-100-python folder), fine labels, 32x32"),
    DatasetKind("imagenet", "imagenet", None, "imagenet",
                "ImageNet ImageFolder tree, resize 256 / centre crop 224"),
    DatasetKind("imagefolder", None, None, "imagenet",
                "any ImageFolder tree root/<split>/<class>/*.jpg|png, resize 256 / centre crop 224"),
    DatasetKind("tensors", None, None, "imagenet", "a saved batch {inputs, targets} (save_tensors), used as is"),
)}
_FOLDER_KINDS = ("imagenet", "imagefolder")


@dataclass(frozen=True)
class DatasetRef:
    """A reference that resolves a dataset: its kind and, when given, its path (``KIND`` or ``KIND=PATH``)."""

    kind: DatasetKind
    path: Path | None  # None: the data root's item

    @property
    def text(self) -> str:
        return self.kind.name if self.path is None else f"{self.kind.name}={self.path}"

    def source(self) -> Path:
        """The path to read: the given one, or the data root's item (one-line DataError when missing)."""
        if self.path is not None:
            if not self.path.exists():
                raise DataError(f"{self.kind.name} source not found: {self.path}")
            return self.path
        if self.kind.item is None:
            raise ConfigError(f"dataset {self.kind.name!r} needs a path: {self.kind.name}=PATH")
        from mqbench.dataroot import require

        return require(self.kind.item)


def parse_dataset(ref: str | DatasetRef) -> DatasetRef:
    """``KIND`` or ``KIND=PATH`` (see the module doc) as a :class:`DatasetRef`."""
    if isinstance(ref, DatasetRef):
        return ref
    name, sep, path = str(ref).partition("=")
    name = name.strip().lower()
    if name not in DATASETS:
        hint = f" (for a folder tree write imagefolder={ref})" if not sep and ("/" in name or "\\" in name) else ""
        raise ConfigError(f"unknown dataset {ref!r}{hint}; expected KIND or KIND=PATH with KIND one of "
                          f"{', '.join(DATASETS)}")
    if sep and not path.strip():
        raise ConfigError(f"empty path in dataset {ref!r}; write {name}=PATH or just {name}")
    kind = DATASETS[name]
    return DatasetRef(kind, Path(path.strip()).expanduser() if sep else None)


DatasetSpec, parse_spec = DatasetRef, parse_dataset  # deprecated names


def save_tensors(path: str | Path, inputs: torch.Tensor, targets: torch.Tensor) -> Path:
    """Write a batch for the ``tensors=PATH`` kind (CPU copies; atomic)."""
    import os
    import tempfile

    check_batch(inputs, targets, "batch")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"inputs": inputs.detach().cpu().contiguous(), "targets": targets.detach().cpu().contiguous()}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_batch(inputs, targets, where: str) -> None:
    """One-line ConfigError unless ``inputs`` is a floating tensor [N, ...] and ``targets`` int64 [N], N >= 1."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ConfigError(f"{where}: inputs and targets must be torch tensors")
    if not inputs.is_floating_point() or inputs.dim() < 2:
        raise ConfigError(f"{where}: inputs must be a floating tensor [N, ...], got {inputs.dtype} {tuple(inputs.shape)}")
    if targets.dtype != torch.int64 or targets.dim() != 1 or len(targets) != len(inputs) or len(inputs) < 1:
        raise ConfigError(f"{where}: targets must be int64 [N] with N = len(inputs) = {len(inputs)}, "
                          f"got {targets.dtype} {tuple(targets.shape)}")


def _tensor_batch(ref: DatasetRef, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    path = ref.source()
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a saved batch: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(doc, dict) or set(doc) != {"inputs", "targets"}:
        raise DataError(f"{path} is not a saved batch (expected the keys inputs, targets)")
    check_batch(doc["inputs"], doc["targets"], str(path))
    if n > len(doc["targets"]):
        raise ConfigError(f"asked for a batch of {n} but {path} holds {len(doc['targets'])}")
    return doc["inputs"][:n], doc["targets"][:n]


def _check_split(ref: DatasetRef, split: str) -> None:
    if ref.kind.splits is not None and split not in ref.kind.splits:
        raise ConfigError(f"unknown {ref.kind.name} split {split!r}; expected one of {', '.join(ref.kind.splits)}")


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` -> float32 (x / 255 - mean) / std with ``NORMALIZATION[name]``."""
    if name not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {name!r}; expected one of {', '.join(NORMALIZATION)}")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION[name])
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ConfigError(f"normalize expects uint8 images [..., 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def _in_memory_split(ref: DatasetRef, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if ref.kind.name == "cifar10":
        return cifar10.load_split(split, ref.source())
    return cifar100.load_split(ref.source(), split)


def class_names(ref: str | DatasetRef, split: str = "train") -> tuple[str, ...]:
    """The class names, in label order."""
    ref = parse_dataset(ref)
    _check_split(ref, split)
    if ref.kind.name == "cifar10":
        return cifar10.CLASSES
    if ref.kind.name == "cifar100":
        return cifar100.class_names(ref.source())
    if ref.kind.name == "tensors":
        raise ConfigError("a tensors=PATH dataset has labels but no class names")
    return imagefolder.list_split(ref.source(), split).classes


def _report_skips(errors: list[str], where: str) -> None:
    if errors:
        print(f"warning: skipped {len(errors)} unreadable image(s) of {where}, each replaced by the next image "
              f"of its class in the seeded order (first: {errors[0]})", file=sys.stderr, flush=True)


def _folder_batch(ref: DatasetRef, split: str, n: int, seed: int, balanced: bool, jobs: int, strict: bool,
                  progress: bool, pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    listing = imagefolder.list_split(ref.source(), split)
    arrays: dict[int, np.ndarray] = {}
    errors: list[str] = []

    def usable(indices: list[int]) -> list[bool]:
        results = imagefolder.load_images([listing.files[i] for i in indices], pre, jobs=jobs, progress=progress)
        for i, (array, error) in zip(indices, results):
            if array is None:
                if strict:
                    raise DataError(error)
                errors.append(error)
            else:
                arrays[i] = array
        return [array is not None for array, _ in results]

    index = select(plan_sample(listing.labels, n, seed, balanced), usable,
                   class_name=lambda label: listing.classes[label]).tolist()
    _report_skips(errors, f"{listing.root}/{split}")
    images = np.stack([arrays[i] for i in index]) if index else np.zeros((0, 3, pre.crop, pre.crop), np.uint8)
    return torch.from_numpy(images), torch.from_numpy(listing.labels[index])


def load_batch(ref: str | DatasetRef, split: str, n: int, seed: int, *, balanced: bool = True,
               normalization: str | None = None, jobs: int = 1, strict: bool = False, progress: bool = True,
               preprocess: Preprocess = Preprocess()) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of ``n`` images of ``split``: normalized float32 ``[n, 3, H, W]`` and int64 labels ``[n]``.

    ``balanced``: every class present in the split gets ``n // k`` images, a seeded ``n % k`` of them
    one more (see :mod:`mqbench.sampling`); for CIFAR-10 the indices equal
    ``cifar10.sample_indices``. ``normalization`` defaults to the dataset's (``cifar10``,
    ``cifar100`` or ``imagenet``). For ImageFolder trees only the sampled files are decoded (in
    ``jobs`` processes, the same pixels for any ``jobs``) and cached on disk; ``strict`` and the
    handling of unreadable images are described in the module doc; ``preprocess`` changes the
    resize/crop sizes. The result depends only on the dataset's data, ``split``, ``n``, ``seed``,
    ``balanced`` and the preprocessing.
    """
    ref = parse_dataset(ref)
    _check_split(ref, split)
    if ref.kind.name == "tensors":
        return _tensor_batch(ref, n)
    norm = normalization or ref.kind.normalization
    if norm not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {norm!r}; expected one of {', '.join(NORMALIZATION)}")
    if ref.kind.name in _FOLDER_KINDS:
        images, labels = _folder_batch(ref, split, n, seed, balanced, jobs, strict, progress, preprocess)
    else:
        all_images, all_labels = _in_memory_split(ref, split)
        names = cifar10.CLASSES if ref.kind.name == "cifar10" else None
        index = select(plan_sample(all_labels, n, seed, balanced),
                       class_name=(lambda label: names[label]) if names else str)
        images, labels = all_images[index], all_labels[index]
    return normalize(images, norm), labels


def iterate_split(ref: str | DatasetRef, split: str, batch_size: int = 250, *, normalization: str | None = None,
                  jobs: int = 1, strict: bool = False, progress: bool = True,
                  preprocess: Preprocess = Preprocess(),
                  listing: "imagefolder.FolderSplit | None" = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized (x, y) batches covering the whole split in its fixed order (sorted paths for trees).

    ImageFolder trees are decoded batch by batch (through the cache), so a 50k-image split never
    sits in memory at once; unreadable images are skipped (counted on stderr at the end) or, with
    ``strict``, a one-line DataError. Arguments are checked when called, not when iterated.
    ``listing``: the tree's split as the caller already listed it (:func:`mqbench.imagefolder.list_split`;
    None: listed here).
    """
    ref = parse_dataset(ref)
    _check_split(ref, split)
    if ref.kind.name == "tensors":
        raise ConfigError("a tensors=PATH dataset is one batch; it has no split to iterate")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    norm = normalization or ref.kind.normalization
    if norm not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {norm!r}; expected one of {', '.join(NORMALIZATION)}")
    if ref.kind.name not in _FOLDER_KINDS:
        images, labels = _in_memory_split(ref, split)
        return ((normalize(images[s: s + batch_size], norm), labels[s: s + batch_size])
                for s in range(0, labels.numel(), batch_size))
    if listing is None:
        listing = imagefolder.list_split(ref.source(), split)

    def batches():
        errors: list[str] = []
        for start in range(0, len(listing.files), batch_size):
            stop = min(start + batch_size, len(listing.files))
            results = imagefolder.load_images(list(listing.files[start:stop]), preprocess, jobs=jobs,
                                              progress=progress)
            keep = []
            for offset, (array, error) in enumerate(results):
                if array is None:
                    if strict:
                        raise DataError(error)
                    errors.append(error)
                else:
                    keep.append(offset)
            if keep:
                x = torch.from_numpy(np.stack([results[k][0] for k in keep]))
                yield normalize(x, norm), torch.from_numpy(listing.labels[start:stop][keep])
        if errors:
            print(f"warning: skipped {len(errors)} unreadable image(s) of {listing.root}/{split} "
                  f"(first: {errors[0]})", file=sys.stderr, flush=True)

    return batches()
