"""Crash-safe file writes, a lock file and CSV tables read with one-line errors, shared by the table builder,
the search and the experiments.

* :func:`atomic_write_text`: write a temp file of a unique name, fsync, rename over the target
  (readers see the old or the new file, never a partial one; two writers of the same file each
  replace it whole, the last one wins);
* :func:`append_line`: append one line and fsync it (an append-only log survives a kill);
* :func:`complete_lines`: the lines of such a log, cutting off a torn last line left by a crash;
* :func:`read_csv_rows`: a CSV table's header and rows with their line numbers, a missing or unreadable file
  as one line (:class:`DataError`);
* :class:`FileLock`: one writer at a time for a run folder or a table (a second one gets a one-line
  :class:`LockHeld` error). The lock is a file created with ``O_CREAT|O_EXCL`` (atomic, also on
  NFS v3+) holding the owner's pid, host and a random token; a lock left by a killed process on
  this host (its pid is gone) is taken over, under an ``flock`` of the folder so that two
  processes never both break it.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import socket
import tempfile
import time
from pathlib import Path

from mqbench.errors import DataError


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise
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


def read_csv_rows(path: str | Path, what: str = "table") -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row)]) of the CSV table at ``path``, rows as :class:`csv.DictReader` gives them
    (the first row on line 2). A missing file is ``DataError("<what> not found: <path>")``, an undecodable or
    malformed one ``DataError("<path> is not a readable CSV: ...")``."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            return header, list(enumerate(reader, start=2))
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from None


def check_writable_folder(folder: str | Path, what: str) -> None:
    """A one-line :class:`DataError` naming the place unless ``folder`` is, or can be created as, a folder this
    process may write in: a probe file of its own is created in (and removed from) the nearest existing
    ancestor, so that permissions, read-only file systems and folders even root cannot write (``/sys``) all
    answer as they will when the command writes. Leaves nothing behind."""
    folder = Path(folder).absolute()
    probe = folder
    while not os.path.exists(probe) and probe != probe.parent:  # (False also for a folder it cannot search)
        probe = probe.parent
    if not os.path.isdir(probe):
        raise DataError(f"{what}: cannot create folder {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        where = f"folder {folder}" if probe == folder else f"cannot create folder {folder}: {probe}"
        raise DataError(f"{what}: {where} cannot be written ({exc.strerror or exc})") from None


def make_folder(folder: str | Path, what: str) -> Path:
    """``folder.mkdir(parents=True, exist_ok=True)``, a failure as one line naming it (:class:`DataError`)."""
    folder = Path(folder)
    check_writable_folder(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what}: cannot create folder {folder}: {exc.strerror or exc}") from None
    return folder


# ------------------------------------------------------------------------------------------ lock file

class LockHeld(DataError):
    """Another process is writing the same run folder or table."""


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_holder(path: Path) -> dict | None:
    """The lock's content; None if it vanished; {} if unreadable (being written, or torn)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


class FileLock:
    """``with FileLock(path, what): ...``: hold the lock file ``path`` (see the module docstring).

    ``what`` names the protected thing in the error ("run folder runs/a", "table t.csv").
    A second :class:`FileLock` on the same path, in any process, is refused while this one is held.
    """

    TORN_GRACE_S = 60.0  # an unreadable lock file older than this is left over from a crash

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self.token: str | None = None

    def acquire(self) -> "FileLock":
        if self.token is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        token = secrets.token_hex(8)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is None or self._break_if_stale(holder):
                    continue  # released or stale: try again
                raise LockHeld(self._busy(holder)) from None
            except OSError as exc:  # e.g. a folder this user cannot write, or a read-only file system
                raise DataError(f"cannot write the lock file for {self.what}: folder {self.path.parent} cannot be "
                                f"written ({exc.strerror or exc})") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.token = token
            return self
        raise LockHeld(self._busy(_read_holder(self.path) or {}))

    def _busy(self, holder: dict) -> str:
        who = (f"process {holder['pid']} on {holder['host']} since {holder.get('since', '?')}"
               if "pid" in holder and "host" in holder else "another process")
        return (f"{self.what} is in use by {who} (lock file {self.path}); wait for it to finish, "
                "or delete the lock file if that process is gone")

    def _stale(self, holder: dict) -> bool:
        if "pid" in holder and "host" in holder:
            return holder["host"] == socket.gethostname() and not _pid_alive(int(holder["pid"]))
        try:  # unreadable: a crash between creating and writing it, if old enough
            return time.time() - self.path.stat().st_mtime > self.TORN_GRACE_S
        except OSError:
            return False

    def _break_if_stale(self, holder: dict) -> bool:
        """Remove the lock if its owner is gone; under an flock of the folder, re-checking that it is
        still the same stale lock (so one process breaks it and none removes a fresh one)."""
        if not self._stale(holder):
            return False
        import fcntl

        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            if _read_holder(self.path) == holder:  # still the stale one (else: gone or new; look again)
                with _quiet():
                    os.unlink(self.path)
            return True
        finally:
            os.close(dir_fd)  # also releases the flock

    def release(self) -> None:
        if self.token is None:
            return
        holder = _read_holder(self.path)
        if holder and holder.get("token") == self.token:
            with _quiet():
                os.unlink(self.path)
        self.token = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
