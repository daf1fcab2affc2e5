"""Crash-safe file writes shared by the table builder, the search and the experiments.

* :func:`atomic_write_text`: write a temp file, fsync, rename over the target (readers see the old
  or the new file, never a partial one);
* :func:`append_line`: append one line and fsync it (an append-only log survives a kill);
* :func:`complete_lines`: the lines of such a log, cutting off a torn last line left by a crash.
"""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def append_line(path: str | Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def has_torn_tail(path: str | Path) -> bool:
    """Whether a non-empty file does not end with a newline (a crash mid-append)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def complete_lines(path: str | Path) -> list[str]:
    """The complete lines of an append-only file, truncating (and fsyncing) a torn last line first."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        data = data[:cut]
    return data.decode("utf-8").splitlines()
