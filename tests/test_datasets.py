"""Dataset registry: spec syntax, ImageFolder trees (preprocessing, sampling, cache, corrupt files),
CIFAR-100 official folders, and the CIFAR-10 entry agreeing with mqbench.data.cifar10."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mqbench.data import cifar10, datasets, imagefolder
from mqbench.data.datasets import NORMALIZATION, class_names, iterate_split, load_batch, parse_dataset
from mqbench.errors import ConfigError, DataError
from mqbench.data.sampling import balanced_indices, plan_sample

CLASSES = ("ant", "bee", "cat")
CORRUPT = "bee/0002.jpg"


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_folder_tree(root, per_class: int = 3, seed: int = 0, corrupt: bool = True):
    """root/{train,val}/<class>/NNNN.{jpg,png}: small non-square images, JPEG and PNG mixed;
    with ``corrupt``, train/bee/0002.jpg holds a truncated JPEG (bee then has one extra file)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = (24, 40) if i % 2 else (36, 20)
                array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                fmt, suffix = ("PNG", "png") if (i + c) % 2 else ("JPEG", "jpg")
                (folder / f"{i:04d}.{suffix}").write_bytes(_encode(array, fmt))
        (root / split / ".hidden.jpg").write_bytes(b"ignored")
        (root / split / CLASSES[0] / "notes.txt").write_text("ignored")
    if corrupt:
        good = _encode(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), "JPEG")
        (root / "train" / CORRUPT).write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture
def tree(tmp_path):
    return write_folder_tree(tmp_path / "tree")


def _seed_with_corrupt(root, n: int, wanted: bool) -> int:
    """A seed whose first-round draw of n balanced images does (or does not) include the corrupt file."""
    listing = imagefolder.list_split(root, "train")
    target = listing.files.index(str((root / "train" / CORRUPT).resolve()))
    for seed in range(100):
        plan = plan_sample(listing.labels, n, seed)
        first = {int(i) for perm, count in zip(plan.perms, plan.counts) for i in perm[:count]}
        if (target in first) == wanted:
            return seed
    raise AssertionError("no such seed")


# --------------------------------------------------------------------------------------------
# Spec syntax and registry
# --------------------------------------------------------------------------------------------

def test_parse_dataset(tmp_path):
    assert parse_dataset("cifar10").path is None and parse_dataset("CIFAR100").kind.name == "cifar100"
    ref = parse_dataset(f"imagenet={tmp_path}")
    assert ref.kind.name == "imagenet" and ref.path == tmp_path and ref.text == f"imagenet={tmp_path}"
    assert datasets.parse_spec is parse_dataset and datasets.DatasetSpec is datasets.DatasetRef  # deprecated names
    assert set(datasets.DATASETS) == {"cifar10", "cifar100", "imagenet", "imagefolder", "tensors"}
    for bad, part in (("mnist", "unknown dataset"), ("/data/tree", "imagefolder=/data/tree"), ("imagenet=", "empty path")):
        with pytest.raises(ConfigError) as exc:
            parse_dataset(bad)
        assert part in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_batch("imagefolder", "train", 2, 0)
    assert "imagefolder=PATH" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        load_batch(f"imagefolder={tmp_path / 'nope'}", "train", 2, 0)
    assert "nope" in _one_line(exc)
    with pytest.raises(ConfigError):
        load_batch("cifar100", "val", 2, 0)


def test_missing_default_source_names_official_source(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path))
    for spec, part in (("imagenet", "image-net.org"), ("cifar100", "cifar-100-python.tar.gz")):
        with pytest.raises(DataError) as exc:
            load_batch(spec, "train" if spec == "cifar100" else "val", 2, 0)
        assert part in _one_line(exc)


# --------------------------------------------------------------------------------------------
# ImageFolder trees
# --------------------------------------------------------------------------------------------

def test_listing(tree):
    listing = imagefolder.list_split(tree, "train")
    assert listing.classes == CLASSES
    assert len(listing.files) == 10 and np.bincount(listing.labels).tolist() == [3, 4, 3]
    assert list(listing.files) == sorted(listing.files)
    with pytest.raises(DataError) as exc:
        imagefolder.list_split(tree, "test")
    assert "train, val" in _one_line(exc)
    (tree / "val" / "dog").mkdir()
    (tree / "val" / "dog" / "0.png").write_bytes(_encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    with pytest.raises(DataError) as exc:
        imagefolder.list_split(tree, "val")
    assert "dog" in _one_line(exc)


def test_batch_shape_balance_determinism(tree, capsys):
    seed = _seed_with_corrupt(tree, 6, wanted=False)
    x, y = load_batch(f"imagefolder={tree}", "train", 6, seed)
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.bincount(y.numpy(), minlength=3).tolist() == [2, 2, 2]
    x2, y2 = load_batch(f"imagenet={tree}", "train", 6, seed)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = load_batch(f"imagefolder={tree}", "val", 7, seed)
    assert sorted(np.bincount(y3.numpy()).tolist()) == [2, 2, 3]
    assert not torch.equal(load_batch(f"imagefolder={tree}", "val", 6, seed + 1)[0], x3[:6])
    assert "skipped" not in capsys.readouterr().err


def test_preprocessing_resize_crop_normalize(tmp_path):
    root = tmp_path / "t"
    (root / "train" / "a").mkdir(parents=True)
    # 448x256: the shorter side is already 256, so only the centre crop acts (columns 112..335).
    columns = np.broadcast_to((np.arange(448) % 256).astype(np.uint8)[None, :, None], (256, 448, 3))
    Image.fromarray(np.ascontiguousarray(columns)).save(root / "train" / "a" / "wide.png")
    # a uniform 30x50 image: upscaled to 256x426, cropped, still uniform.
    Image.fromarray(np.full((50, 30, 3), (10, 128, 250), np.uint8)).save(root / "train" / "a" / "tall.png")
    out = imagefolder.load_images([str(root / "train" / "a" / "wide.png"), str(root / "train" / "a" / "tall.png")])
    wide, tall = out[0][0], out[1][0]
    assert wide.shape == (3, 224, 224) and np.array_equal(wide[0, 5], (np.arange(112, 336) % 256).astype(np.uint8))
    assert np.all(tall == np.array([10, 128, 250], np.uint8)[:, None, None])
    x, _ = load_batch(f"imagefolder={root}", "train", 2, 0, balanced=False)
    mean, std = NORMALIZATION["imagenet"]
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip((10, 128, 250), mean, std)])
    for image in x:
        if torch.allclose(image[:, 0, 0], expected, atol=1e-6):
            break
    else:
        raise AssertionError("uniform image not normalized with the ImageNet mean/std")
    small = load_batch(f"imagefolder={root}", "train", 1, 0, preprocess=imagefolder.Preprocess(40, 32))[0]
    assert small.shape == (1, 3, 32, 32)


def test_jobs_give_identical_pixels(tree, tmp_path, monkeypatch):
    seed = _seed_with_corrupt(tree, 9, wanted=True)
    x1, y1 = load_batch(f"imagefolder={tree}", "train", 9, seed, jobs=1)
    monkeypatch.setenv("EVOPROXY_CACHE", str(tmp_path / "other-cache"))  # decode again, in worker processes
    monkeypatch.setattr(imagefolder, "_CHUNK", 2)  # several tasks, so that the workers really share them
    calls = []
    real_map = imagefolder.map_items
    monkeypatch.setattr(imagefolder, "map_items",
                        lambda fn, items, **kw: calls.append((len(items), kw["jobs"])) or real_map(fn, items, **kw))
    x2, y2 = load_batch(f"imagefolder={tree}", "train", 9, seed, jobs=2)
    assert calls == [(5, 2), (1, 2)]  # 9 images in chunks of 2, then the corrupt one's replacement
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert any((tmp_path / "other-cache" / "imagefolder").rglob("*.npy"))


def test_second_call_decodes_nothing(tree, monkeypatch, capsys):
    seed = _seed_with_corrupt(tree, 9, wanted=True)
    first = load_batch(f"imagefolder={tree}", "train", 9, seed)
    assert capsys.readouterr().err.count("skipped 1 unreadable") == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(imagefolder, "decode_file", no_decoding)
    second = load_batch(f"imagefolder={tree}", "train", 9, seed)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert "skipped 1 unreadable" in capsys.readouterr().err  # the corrupt file's verdict is cached too
    os.utime(tree / "train" / "ant" / "0000.jpg", ns=(1, 1))  # a changed file is decoded again
    with pytest.raises(AssertionError, match="cache hit"):
        load_batch(f"imagefolder={tree}", "train", 9, seed)


def test_corrupt_image_skipped_or_strict(tree, capsys):
    spec = f"imagefolder={tree}"
    seed = _seed_with_corrupt(tree, 9, wanted=True)
    x, y = load_batch(spec, "train", 9, seed)
    assert x.shape[0] == 9 and np.bincount(y.numpy()).tolist() == [3, 3, 3]
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "skipped 1 unreadable image(s)" in err and CORRUPT in err
    assert "Traceback" not in err
    with pytest.raises(DataError) as exc:
        load_batch(spec, "train", 9, seed, strict=True)
    message = _one_line(exc)
    assert message.startswith("cannot decode image") and CORRUPT in message
    # with every bee image needed, a skipped one cannot be replaced: one line, not a short batch
    with pytest.raises(DataError) as exc:
        load_batch(spec, "train", 10, seed)
    assert "only 3 of 4 are readable" in _one_line(exc)
    clean = _seed_with_corrupt(tree, 6, wanted=False)
    assert load_batch(spec, "train", 6, clean, strict=True)[0].shape == (6, 3, 224, 224)


def test_iterate_split(tree, capsys):
    batches = list(iterate_split(f"imagefolder={tree}", "train", batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 3, 2]  # 10 files, the corrupt one skipped
    labels = torch.cat([b[1] for b in batches])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "skipped 1 unreadable" in capsys.readouterr().err
    with pytest.raises(DataError):
        list(iterate_split(f"imagefolder={tree}", "train", batch_size=4, strict=True))
    assert class_names(f"imagefolder={tree}") == CLASSES


# --------------------------------------------------------------------------------------------
# CIFAR-100 (official python folder) and CIFAR-10
# --------------------------------------------------------------------------------------------

class _Python2Pickler(pickle._Pickler):
    """Protocol 2 with every str/bytes written as a Python 2 ``str`` (BINSTRING opcodes) and numpy's
    old module name: the byte layout of the official files, written by Python 2's cPickle."""

    def _py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = dispatch[bytes] = _py2_string


def _dump_py2(obj, path):
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar100(folder, seed: int = 0):
    """The official layout: train/test pickles of dicts (keys 'data' uint8 numpy [N, 3072],
    'fine_labels', 'coarse_labels', 'filenames', 'batch_label') and meta; Python 2 style for train
    and meta (as in the official files), protocol 4 for test (as a re-saved copy would be)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    fine = [0, 7, 42, 99, 3] * 2
    for split, count in (("train", 10), ("test", 5)):
        blob = {"batch_label": f"{split} batch", "filenames": [f"{i}.png" for i in range(count)],
                "fine_labels": fine[:count], "coarse_labels": [f // 5 for f in fine[:count]],
                "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        if split == "train":
            _dump_py2(blob, folder / split)
        else:
            with open(folder / split, "wb") as fh:
                pickle.dump({k.encode(): v for k, v in blob.items()}, fh, protocol=4)
    _dump_py2({"fine_label_names": [f"c{i}" for i in range(100)],
               "coarse_label_names": [f"s{i}" for i in range(20)]}, folder / "meta")
    return folder


def test_cifar100_official_folder(tmp_path):
    folder = write_cifar100(tmp_path / "cifar-100-python")
    x, y = load_batch(f"cifar100={folder}", "train", 5, 1)
    assert x.shape == (5, 3, 32, 32) and sorted(y.tolist()) == [0, 3, 7, 42, 99]
    with open(folder / "train", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")  # the test's own file
    index = raw[b"fine_labels"].index(int(y[0]))  # each label occurs twice; either image may be drawn
    candidates = [datasets.normalize(torch.from_numpy(raw[b"data"][i].reshape(3, 32, 32)), "cifar100")
                  for i in (index, index + 5)]
    assert any(torch.equal(x[0], c) for c in candidates)
    assert torch.equal(load_batch(f"cifar100={folder}", "train", 5, 1)[0], x)
    assert class_names(f"cifar100={folder}")[42] == "c42"
    assert load_batch(f"cifar100={folder}", "test", 5, 0)[0].shape == (5, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar100_refuses_foreign_pickles(tmp_path):
    folder = write_cifar100(tmp_path / "cifar-100-python")
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"fine_labels": [1]}, fh)
    with pytest.raises(DataError) as exc:
        load_batch(f"cifar100={folder}", "train", 1, 0)
    assert "forbidden global" in _one_line(exc) and "getcwd" in str(exc.value)
    (folder / "test").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError) as exc:
        load_batch(f"cifar100={folder}", "test", 1, 0)
    assert "corrupt CIFAR-100 file" in _one_line(exc)
    with open(folder / "test", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=object), b"fine_labels": [1, 2]}, fh)
    with pytest.raises(DataError) as exc:
        load_batch(f"cifar100={folder}", "test", 1, 0)
    assert "uint8" in _one_line(exc)


def test_cifar10_entry_matches_cifar10_module(tiny_data_root):
    x, y = load_batch("cifar10", "train", 20, 3)
    ref_x, ref_y = cifar10.sample_batch("train", 20, 3)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 10, 300))
    for n, seed in ((0, 0), (7, 1), (64, 2), (100, 5)):
        assert torch.equal(balanced_indices(labels, n, seed), cifar10.sample_indices(labels, n, seed))
        assert torch.equal(balanced_indices(labels, n, seed, balanced=False),
                           cifar10.sample_indices(labels, n, seed, balanced=False))
    with pytest.raises(ConfigError):
        load_batch("cifar10", "train", 50, 0)  # 4 images per class in the tiny tree
