"""Concurrency safety: a second writer of a run folder or a table is refused with a one-line error (a lock
file, taken over when its owner died on this host); files and cache entries are replaced atomically."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from evoproxy.cli import main
from mqbench.fileio import FileLock, LockHeld, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    path = tmp_path / "x.lock"
    with FileLock(path, "table x.csv"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockHeld) as exc:
            FileLock(path, "table x.csv").acquire()
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("table x.csv is in use by process") and str(path) in msg
    assert not path.exists()
    with FileLock(path, "table x.csv"):  # free again
        pass


def test_a_lock_of_a_dead_process_is_taken_over_on_its_host_only(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "old"}))
    with FileLock(path, "x") as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    path.write_text(json.dumps({"pid": _dead_pid(), "host": "another-machine", "token": "old"}))
    with pytest.raises(LockHeld, match="process .* on another-machine"):  # its pid cannot be checked from here
        FileLock(path, "x").acquire()


def test_another_process_holds_then_dies_by_kill_9(tmp_path):
    path = tmp_path / "x.lock"
    code = ("import sys, time; from mqbench.fileio import FileLock; FileLock(sys.argv[1], 'x').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"process {proc.pid} "):
            FileLock(path, "x").acquire()
    finally:
        proc.kill()
        proc.wait()
    with FileLock(path, "x"):
        pass


def test_a_busy_run_folder_refuses_a_second_search(search_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with FileLock(run / ".lock", "run folder elsewhere"):
        assert main(["search", "--bench", "nb201-cifar10", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: run folder {run} is in use by process {os.getpid()}") and "\n" not in err
    assert list(run.iterdir()) == []  # nothing written, no extraction started


def test_a_failed_fresh_search_leaves_no_folder_and_no_lock(search_root, tmp_path):
    run = tmp_path / "run"
    assert main(["search", "--bench", "nb201-cifar10", "--out", str(run), "--terminals", "nope", "--quiet"]) == 2
    assert not run.exists()


def test_a_busy_table_refuses_a_second_build(tiny_data_root, tmp_path, capsys):
    out = tmp_path / "t.csv"
    with FileLock(tmp_path / "t.csv.lock", "table"):
        assert main(["table", "build", "--model", "resnet8", "--configs", "2", "--out", str(out), "--jobs", "1",
                     "--checkpoint", str(tiny_data_root / "pretrained" / "resnet8-test.th")]) == 2
    assert "is in use by process" in capsys.readouterr().err
    assert not out.exists()


def test_atomic_write_text_with_concurrent_writers(tmp_path):
    path = tmp_path / "f.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(4)]
    errors = []

    def write(text):
        try:
            for _ in range(25):
                atomic_write_text(path, text)
                assert path.read_text() in texts  # never a mix or a partial file
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left


def test_cache_entries_are_replaced_atomically(tmp_path, monkeypatch):
    """primitives/many.py writes an entry to a unique temp file and renames it (the baselines' network cache
    does the same with a pid-named temp): concurrent writers each replace it whole; a failed write keeps the old."""
    from primitives import extract
    from primitives import many

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3))
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    stats = [extract(model, x * (s + 1), y) for s in range(3)]  # three different entries
    path = tmp_path / "entry.pt"
    threads = [threading.Thread(target=lambda s=s: [many._save(path, s) for _ in range(10)]) for s in stats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = many._load(path).layers[0].tensors["act_out"]
    assert sum(torch.equal(loaded, s.layers[0].tensors["act_out"]) for s in stats) == 1  # one whole entry

    before = path.read_bytes()
    monkeypatch.setattr(many.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        many._save(path, stats[0])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["entry.pt"]


def test_lock_in_a_folder_that_cannot_be_written_is_one_line(unwritable_folder):
    """Issue 22 item 8: creating the lock file in such a folder was an OSError traceback; now one line naming it
    (a DataError, not LockHeld: nobody holds the lock)."""
    from mqbench.errors import DataError

    with pytest.raises(DataError) as exc:
        FileLock(unwritable_folder / ".lock", f"run folder {unwritable_folder}").acquire()
    msg = str(exc.value)
    assert not isinstance(exc.value, LockHeld) and "\n" not in msg
    assert msg.startswith(f"cannot write the lock file for run folder {unwritable_folder}: folder {unwritable_folder} "
                          "cannot be written")
