"""What a table build reads: the pretrained model (by name, through a registry) and the images.

Models (``MODELS``): the CIFAR ResNets (``resnet20``, ``resnet32``, any ``resnet<6n+2>``) through
:func:`mqbench.networks.resnet_cifar.load_pretrained` (default checkpoint: the data root's), and the
ImageNet networks of :mod:`mqbench.networks.imagenet` (``resnet18``, ``resnet50``, ``mobilenet_v2``)
through :func:`~mqbench.networks.imagenet.load_imagenet_checkpoint` (a torchvision-format checkpoint:
``--checkpoint`` or the data root's ``pretrained/<torchvision file>``, never random weights; its
classifier must have as many outputs as the dataset has classes; any dataset).

Data: a dataset reference of :mod:`mqbench.datasets` (``cifar10``, ``cifar100=PATH``, ``imagenet=PATH``,
``imagefolder=PATH``). Calibration images are a seeded class-balanced sample of the train split
(:func:`mqbench.datasets.load_batch`); top-1 is measured on the whole evaluation split (``test`` for
CIFAR, ``val`` for ImageFolder trees). CIFAR splits sit in memory; ImageFolder splits are read batch
by batch (:func:`mqbench.datasets.iterate_split`, through the decoded-image cache), never all at once.
CIFAR-10 without a reference (``data=None``) reads exactly what builds before datasets existed read
(``mqbench.cifar10``), so the committed tables resume unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from mqbench.errors import ConfigError, DataError
from mqbench.ptq import PTQSettings, fold_batchnorm, quantize_and_calibrate, reestimate_batchnorm, top1

FOLDER_KINDS = ("imagenet", "imagefolder")
EVAL_BATCH_FOLDER = 250  # images decoded per evaluation batch of an ImageFolder split


@dataclass(frozen=True)
class ModelEntry:
    family: str  # "cifar" | "imagenet"
    what: str


def _imagenet_names() -> tuple[str, ...]:
    from mqbench.networks.imagenet import NETWORKS

    return tuple(NETWORKS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of model ``name`` (one-line ConfigError for an unknown one)."""
    if name in _imagenet_names():
        return ModelEntry("imagenet", "ImageNet network, torchvision checkpoint (--checkpoint or the data root's)")
    if name.startswith("resnet") and name.removeprefix("resnet").isdigit():
        from mqbench.networks.resnet_cifar import DEPTHS

        depth = int(name.removeprefix("resnet"))
        if (depth - 2) % 6 == 0 and depth >= 8:
            return ModelEntry("cifar", f"CIFAR ResNet-{depth} (checkpoint default: the data root's; usual depths "
                                       f"{', '.join(map(str, DEPTHS))})")
    raise ConfigError(f"unknown model {name!r}; expected a CIFAR ResNet (resnet20, resnet32, ... resnet<6n+2>) "
                      f"or an ImageNet network ({', '.join(_imagenet_names())})")


def data_kind(data: str | None) -> str:
    """The dataset kind of a dataset reference (``cifar10`` when None)."""
    if data is None:
        return "cifar10"
    from mqbench.datasets import parse_dataset

    return parse_dataset(data).kind.name


def eval_split(data: str | None) -> str:
    return "val" if data_kind(data) in FOLDER_KINDS else "test"


def num_classes(data: str | None) -> int:
    if data is None:
        return 10
    from mqbench.datasets import class_names

    return len(class_names(data, "train"))


def load_model(name: str, checkpoint: str | Path | None, data: str | None = None) -> nn.Module:
    """The FP model ``name`` in eval mode, with ``checkpoint_path``/``checkpoint_sha256``/``normalization``."""
    entry = model_entry(name)
    if entry.family == "cifar":
        from mqbench.networks.resnet_cifar import load_pretrained

        if data_kind(data) != "cifar10":
            raise ConfigError(f"{name} is a CIFAR-10 network (10 classes, 32x32); use an ImageNet network "
                              f"({', '.join(_imagenet_names())}) for {data_kind(data)}")
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
            raise DataError(f"checkpoint not found: {checkpoint}")
        return load_pretrained(int(name.removeprefix("resnet")), checkpoint)
    from mqbench.networks.imagenet import load_imagenet_checkpoint

    if checkpoint is None:  # the data root's torchvision file, or a one-line error naming its download
        from mqbench.dataroot import require
        from mqbench.networks.imagenet import CHECKPOINT_ITEMS

        checkpoint = require(CHECKPOINT_ITEMS[name])
    return load_imagenet_checkpoint(name, checkpoint, num_classes(data))


def check_data(data: str | None) -> None:
    """One-line errors for a dataset the build cannot use (no train or no evaluation split, ...) before any work."""
    if data is None or data_kind(data) not in FOLDER_KINDS:
        return
    from mqbench import imagefolder
    from mqbench.datasets import parse_dataset

    root = parse_dataset(data).source()
    for split in ("train", "val"):
        imagefolder.list_split(root, split)


def image_shape(data: str | None, preprocess) -> tuple[int, int, int]:
    """(3, H, W) of the images the model sees (for ``layer_macs``)."""
    if data_kind(data) in FOLDER_KINDS:
        return (3, preprocess.crop, preprocess.crop)
    return (3, 32, 32)


class Images:
    """The calibration images and the evaluation split of a build, in the model's normalization."""

    def __init__(self, data: str | None, data_source, normalization: str, ptq: PTQSettings, preprocess=None,
                 jobs: int = 1):
        self.data, self.normalization, self.preprocess = data, normalization, preprocess
        self.counted: int | None = None  # readable evaluation images, once a pass has counted them
        self._listing = None  # an ImageFolder tree's evaluation split, listed on the first pass
        if data is None:  # the pre-datasets CIFAR-10 path, byte for byte
            from mqbench.cifar10 import load_split, normalize, sample_indices

            train_x, train_y = load_split("train", data_source)
            test_x, test_y = load_split("test", data_source)
            idx = sample_indices(train_y, ptq.calib_images, ptq.calib_seed, balanced=True)
            self.calib = normalize(train_x[idx], normalization)
            self._test = (normalize(test_x, normalization), test_y)
            return
        from mqbench.datasets import load_batch

        kw = {"preprocess": preprocess} if preprocess is not None else {}
        self.calib, _ = load_batch(data, "train", ptq.calib_images, ptq.calib_seed, balanced=True,
                                   normalization=normalization, jobs=jobs, progress=False, **kw)
        self._test = None
        if data_kind(data) not in FOLDER_KINDS:  # CIFAR-100: 10k images, kept in memory
            from mqbench.datasets import iterate_split

            xs, ys = zip(*iterate_split(data, "test", 10_000, normalization=normalization, progress=False))
            self._test = (torch.cat(xs), torch.cat(ys))

    @property
    def in_memory(self) -> bool:
        return self._test is not None

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            raise ConfigError("the evaluation split of an ImageFolder tree is read in batches (use batches())")
        return self._test

    def batches(self):
        """(x, y) batches covering the evaluation split."""
        if self._test is not None:
            yield self._test
            return
        from mqbench import imagefolder
        from mqbench.datasets import iterate_split, parse_dataset

        if self._listing is None:  # listed once per build process (50k files), not once per configuration
            self._listing = imagefolder.list_split(parse_dataset(self.data).source(), "val")
        kw = {"preprocess": self.preprocess} if self.preprocess is not None else {}
        yield from iterate_split(self.data, "val", EVAL_BATCH_FOLDER, normalization=self.normalization,
                                 progress=False, listing=self._listing, **kw)


def split_top1(model: nn.Module, images: Images, batch: int) -> tuple[float, int]:
    """(top-1 %, images counted) of an evaluation-ready ``model`` over ``images.batches()``."""
    correct, total = 0, 0
    for x, y in images.batches():
        correct += round(top1(model, x, y, batch) * y.numel() / 100)
        total += y.numel()
    if total == 0:
        raise DataError(f"the evaluation split of {images.data} has no readable image")
    images.counted = total
    return 100.0 * correct / total, total


def ptq_accuracy(fp_model: nn.Module, full_bits: list[int], images: Images, ptq: PTQSettings, device=None) -> float:
    """Top-1 (%) after PTQ at ``full_bits``: :func:`mqbench.ptq.ptq_top1` on in-memory splits, the same
    pipeline batch by batch on ImageFolder splits."""
    from mqbench.ptq import ptq_top1

    if images.in_memory:
        x, y = images.test
        return ptq_top1(fp_model, full_bits, images.calib, x, y, ptq, device=device)
    model = quantize_and_calibrate(fp_model, full_bits, images.calib, ptq, device=device)
    fold_batchnorm(model)
    return split_top1(model, images, ptq.eval_batch)[0]


def folder_fp_accuracy(fp_model: nn.Module, images: Images, ptq: PTQSettings, reestimate: bool, device=None) -> float:
    """Full-precision top-1 (%) over a split read in batches (:func:`mqbench.ptq.fp_top1` for in-memory
    splits), with BN re-estimated on the calibration images when ``reestimate``."""
    model = copy.deepcopy(fp_model)
    model = model if device is None else model.to(device)
    if reestimate:
        reestimate_batchnorm(model, images.calib, ptq.bn_batch)
    return split_top1(model, images, ptq.eval_batch)[0]
