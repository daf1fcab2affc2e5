"""Tests for mqbench.cifar10 on tiny synthetic datasets (plus one check on the real archive)."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from evoproxy.errors import ConfigError, DataError
from mqbench import cifar10
from mqbench.dataroot import locate

N_TRAIN, N_TEST = 3, 2  # images per class
_USER_CACHE = os.environ.get("EVOPROXY_CACHE")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder (nothing is kept in memory between calls)."""
    monkeypatch.setenv("EVOPROXY_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "cifar10"


def _jpeg(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    """An extracted image tree: train/<class>/NNNN.jpg (3 per class) and test/... (2 per class)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar10-jpg"
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        for name in cifar10.CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                (root / split / name / f"{i:04d}.jpg").write_bytes(_jpeg(rng))
    return root


def _archive(tree, path, mode="w:gz", prefix=""):
    with tarfile.open(path, mode) as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"{prefix}{split}")
    return path


@pytest.fixture
def archive(tree, tmp_path):
    return _archive(tree, tmp_path / "cifar10-jpg.tar.gz")


def _tar_with(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _raw_batches(seed, sizes):
    """Random (uint8 [n, 3072], labels [n]) pairs, one per size."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)) for n in sizes]


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


# ---------------------------------------------------------------------------- readers

def test_archive_shapes_dtypes_and_labels(archive):
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = cifar10.load_split(split, archive)
        assert images.dtype == torch.uint8 and images.shape == (10 * count, 3, 32, 32)
        assert labels.dtype == torch.int64
        assert labels.tolist() == torch.arange(10).repeat_interleave(count).tolist()


def test_archive_folder_and_variants_agree(tree, archive, tmp_path):
    expected = cifar10.load_split("train", tree)
    variants = [
        archive,
        _archive(tree, tmp_path / "plain.tar", mode="w"),
        _archive(tree, tmp_path / "prefixed.tar.gz", prefix="cifar10-jpg/"),
    ]
    for source in variants:
        images, labels = cifar10.load_split("train", source)
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    # the pixels are those of the JPEG files, channel-first
    first = np.array(Image.open(tree / "train" / "airplane" / "0000.jpg").convert("RGB"))
    assert torch.equal(expected[0][0], torch.from_numpy(first).permute(2, 0, 1))


def test_png_images_in_folder(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (tmp_path / "t" / "test" / "frog").mkdir(parents=True)
    Image.fromarray(array).save(tmp_path / "t" / "test" / "frog" / "0.png")
    images, labels = cifar10.load_split("test", tmp_path / "t")
    assert labels.tolist() == [6]
    assert torch.equal(images[0], torch.from_numpy(array).permute(2, 0, 1))  # PNG is lossless


def test_batches_py(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = _raw_batches(2, [4, 3, 2, 5, 1, 6])
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (data, labels) in zip(names, batches):
        with open(folder / name, "wb") as handle:  # bytes keys, like the official (Python 2) files
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels.tolist()}, handle, protocol=4)
    images, labels = cifar10.load_split("train", folder)
    assert images.shape == (15, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images.reshape(15, -1), torch.from_numpy(np.concatenate([d for d, _ in batches[:5]])))
    assert labels.tolist() == np.concatenate([lab for _, lab in batches[:5]]).tolist()
    test_images, test_labels = cifar10.load_split("test", folder)
    assert torch.equal(test_images.reshape(6, -1), torch.from_numpy(batches[5][0]))
    assert test_labels.tolist() == batches[5][1].tolist()


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str with the BINSTRING opcodes of Python 2's str, as the official files have."""

    def save_bytes(self, obj):
        header = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else (
            pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(header + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def test_python2_style_batch_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    ((data, labels),) = _raw_batches(4, [3])
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump({"batch_label": "testing batch 1 of 1", "data": data, "labels": labels.tolist()})
    raw = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # numpy 1 name
    (folder / "test_batch").write_bytes(raw)
    images, loaded_labels = cifar10.load_split("test", folder)
    assert torch.equal(images.reshape(3, -1), torch.from_numpy(data))
    assert loaded_labels.tolist() == labels.tolist()


def test_batches_bin(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    batches = _raw_batches(3, [2, 2, 2, 2, 2, 3])
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (data, labels) in zip(names, batches):
        np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tofile(folder / name)
    images, labels = cifar10.load_split("test", folder)
    assert images.shape == (3, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(images.reshape(3, -1), torch.from_numpy(batches[5][0]))
    assert labels.tolist() == batches[5][1].tolist()
    assert cifar10.load_split("train", folder)[0].shape == (10, 3, 32, 32)


def test_default_source_comes_from_data_root(archive, tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    os.replace(archive, root / "cifar10" / "cifar10-jpg.tar.gz")
    monkeypatch.setenv("EVOPROXY_DATA", str(root))
    assert cifar10.load_split("test")[0].shape == (10 * N_TEST, 3, 32, 32)


# ---------------------------------------------------------------------------- caching

def test_cache_miss_then_hit_without_reading_archive(archive, private_cache, monkeypatch):
    images, labels = cifar10.load_split("train", archive)
    assert sorted(p.name.split(".", 1)[1] for p in private_cache.iterdir()) == ["images.npy", "labels.npy"]

    def no_archive(*args, **kwargs):
        raise AssertionError("archive opened despite the cache")

    monkeypatch.setattr(tarfile, "open", no_archive)
    cached = cifar10.load_split("train", archive)
    assert torch.equal(cached[0], images) and torch.equal(cached[1], labels)


def test_corrupt_cache_is_rebuilt(archive, private_cache):
    images, _ = cifar10.load_split("test", archive)
    (cache_file,) = private_cache.glob("*.images.npy")
    cache_file.write_bytes(cache_file.read_bytes()[:200])  # a half-written file
    assert torch.equal(cifar10.load_split("test", archive)[0], images)
    assert np.load(cache_file).shape == tuple(images.shape)  # rewritten whole
    assert not list(private_cache.glob("*.tmp"))


def test_changed_source_invalidates_cache(tree, tmp_path, private_cache):
    archive = _archive(tree, tmp_path / "a.tar.gz")
    before = cifar10.load_split("test", archive)[0].clone()
    (tree / "test" / "cat" / "0000.jpg").write_bytes(_jpeg(np.random.default_rng(99)))
    os.utime(tree / "test" / "cat" / "0000.jpg", ns=(1, 1))
    _archive(tree, archive)
    os.utime(archive, ns=(2, 2))  # a different size or mtime makes a different fingerprint
    after = cifar10.load_split("test", archive)[0]
    assert not torch.equal(before, after)
    assert len(list(private_cache.glob("*.images.npy"))) == 1  # the stale cache was dropped


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("keep", [0.3, 0.8, -6])
def test_truncated_archive(archive, tmp_path, keep):
    data = archive.read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train", broken)
    _one_line_naming(exc, broken)


def test_not_a_tar(tmp_path):
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"this is not a tar archive\n" * 100)
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train", bogus)
    _one_line_naming(exc, bogus)


def test_undecodable_member_is_named(tmp_path):
    bad = _tar_with(tmp_path / "bad.tar.gz", {"train/cat/0000.jpg": b"\xff\xd8 not really a jpeg"})
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train", bad)
    _one_line_naming(exc, bad)
    assert "train/cat/0000.jpg" in str(exc.value)


def test_wrong_image_size(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    bad = _tar_with(tmp_path / "small.tar.gz", {"test/dog/0.png": buffer.getvalue()})
    with pytest.raises(DataError, match="expected 32x32"):
        cifar10.load_split("test", bad)


def test_unexpected_class_directory(tree, tmp_path):
    bad = _tar_with(tmp_path / "unicorn.tar.gz", {"train/unicorn/0000.jpg": b"x"})
    with pytest.raises(DataError, match="unicorn") as exc:
        cifar10.load_split("train", bad)
    _one_line_naming(exc, bad)
    (tree / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn"):
        cifar10.load_split("train", tree)


def test_no_images_for_split(tree, tmp_path):
    only_train = _tar_with(tmp_path / "train-only.tar.gz", {"train/cat/0000.jpg": _jpeg(np.random.default_rng(5))})
    for source in (only_train, tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(DataError, match="no images") as exc:
            cifar10.load_split("test", source)
        _one_line_naming(exc, source)


def test_missing_source(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "cifar10-jpg.tar.gz"
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train", missing)
    _one_line_naming(exc, missing)
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train")
    assert "\n" not in str(exc.value) and "cifar10-jpg.tar.gz" in str(exc.value)


def test_missing_batch_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073))
    with pytest.raises(DataError) as exc:
        cifar10.load_split("train", folder)
    _one_line_naming(exc, folder / "data_batch_1.bin")
    (folder / "test_batch.bin").write_bytes(bytes(3000))
    with pytest.raises(DataError, match="multiple of 3073"):
        cifar10.load_split("test", folder)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_forbidden_pickle_global_is_not_executed(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, handle, protocol=4)
    with pytest.raises(DataError, match="forbidden global .*system") as exc:
        cifar10.load_split("test", folder)
    _one_line_naming(exc, folder / "test_batch")
    assert not marker.exists()


def test_corrupt_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=4)[:-30])
    with pytest.raises(DataError, match="corrupt") as exc:
        cifar10.load_split("test", folder)
    _one_line_naming(exc, folder / "test_batch")


def test_bad_split_and_arguments(archive):
    with pytest.raises(ConfigError):
        cifar10.load_split("valid", archive)
    with pytest.raises(ConfigError):
        cifar10.iterate_split("test", batch_size=0, source=archive)
    with pytest.raises(ConfigError):
        cifar10.sample_batch("test", 4, 0, normalization="mnist", source=archive)


# ---------------------------------------------------------------------------- normalize and sampling

@pytest.mark.parametrize("stats", ["cifar10", "imagenet"])
def test_normalize(stats):
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[1] = 255
    out = cifar10.normalize(images, stats)
    mean, std = (torch.tensor(v) for v in cifar10.NORMALIZATION[stats])
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out[0, :, 0, 0], -mean / std)
    assert torch.allclose(out[1, :, 3, 3], (1 - mean) / std)
    assert torch.equal(cifar10.normalize(images[0], stats), out[0])  # a single image works too


def test_normalize_rejects_bad_input():
    with pytest.raises(ConfigError):
        cifar10.normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), "mnist")
    with pytest.raises(ConfigError):
        cifar10.normalize(torch.zeros(1, 3, 2, 2), "cifar10")


def test_normalization_constants():
    assert cifar10.NORMALIZATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert cifar10.NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert cifar10.CLASSES[0] == "airplane" and cifar10.CLASSES[9] == "truck" and len(cifar10.CLASSES) == 10


LABELS = torch.arange(10).repeat_interleave(50)  # sorted by class, like the real data


def test_sample_indices_balanced():
    index = cifar10.sample_indices(LABELS, 25, seed=1)
    assert index.dtype == torch.int64 and index.numel() == 25 == index.unique().numel()
    counts = torch.bincount(LABELS[index], minlength=10)
    assert sorted(counts.tolist()) == [2] * 5 + [3] * 5
    assert torch.equal(index, cifar10.sample_indices(LABELS, 25, seed=1))
    assert not torch.equal(index, cifar10.sample_indices(LABELS, 25, seed=2))
    assert not torch.equal(index.sort().values, index)  # shuffled, not grouped by class
    full = cifar10.sample_indices(LABELS, 500, seed=3)
    assert torch.equal(full.sort().values, torch.arange(500))


def test_sample_indices_unbalanced():
    index = cifar10.sample_indices(LABELS, 40, seed=1, balanced=False)
    assert index.numel() == 40 == index.unique().numel()
    assert torch.equal(index, cifar10.sample_indices(LABELS, 40, seed=1, balanced=False))
    assert torch.bincount(LABELS[index]).max() > 0 and index.max() > 40  # not the first 40


def test_sample_indices_too_many():
    with pytest.raises(ConfigError):
        cifar10.sample_indices(LABELS, 501, seed=0)
    with pytest.raises(ConfigError):
        cifar10.sample_indices(LABELS, 501, seed=0, balanced=False)
    with pytest.raises(ConfigError):  # enough images in all, but not per class
        cifar10.sample_indices(torch.tensor([0] * 20 + [1] * 2), 20, seed=0)


def test_sample_batch(archive):
    x, y = cifar10.sample_batch("train", 20, seed=7, source=archive)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [2] * 10
    x2, y2 = cifar10.sample_batch("train", 20, seed=7, source=archive)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = cifar10.sample_batch("train", 20, seed=8, source=archive)
    assert not torch.equal(x, x3)
    images, labels = cifar10.load_split("train", archive)
    index = cifar10.sample_indices(labels, 20, 7)
    assert torch.equal(x, cifar10.normalize(images[index])) and torch.equal(y, labels[index])
    x_imagenet, _ = cifar10.sample_batch("train", 20, seed=7, normalization="imagenet", source=archive)
    assert torch.allclose(x_imagenet, cifar10.normalize(images[index], "imagenet"))
    with pytest.raises(ConfigError):
        cifar10.sample_batch("train", 31, seed=0, source=archive)


def test_iterate_split(archive):
    images, labels = cifar10.load_split("train", archive)
    batches = list(cifar10.iterate_split("train", batch_size=7, source=archive))
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), cifar10.normalize(images))
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


# ---------------------------------------------------------------------------- the real data

@pytest.mark.skipif(locate("cifar10") is None, reason="real CIFAR-10 not under the data root")
def test_real_test_split(monkeypatch):
    # use the ordinary cache so that only the first run ever decodes (about 3-5 s on 2 cores)
    if _USER_CACHE is None:
        monkeypatch.delenv("EVOPROXY_CACHE")
    else:
        monkeypatch.setenv("EVOPROXY_CACHE", _USER_CACHE)
    images, labels = cifar10.load_split("test")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10
