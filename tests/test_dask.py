"""The dask backend on a real ``dask.distributed.LocalCluster`` (2 worker processes, localhost): a table
build, an extraction and a 3-generation search equal loky's; a worker killed mid-build costs no row."""
from __future__ import annotations

import csv
import os
import signal
import threading
import time

import pytest
import torch

distributed = pytest.importorskip("dask.distributed")

from evoproxy.cli import main  # noqa: E402
from mqbench.bench.build import build_table, planned_rows, read_rows  # noqa: E402
from mqbench.parallel import current_backend, map_items, use_backend  # noqa: E402
from mqbench.quant.ptq import PTQSettings  # noqa: E402

TINY_PTQ = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10)
SEARCH = ["--bench", "nb201-cifar10", "--samples", "6", "--population", "4", "--generations", "3",
          "--batch", "8", "--seed", "3", "--quiet", "--structure", "tree", "--jobs", "2"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as c, distributed.Client(c, set_as_default=False) as client:
        yield c.scheduler_address, client


def _build(root, out, configs=4, jobs=2, **kw):
    return build_table("resnet8", configs, 0, out, jobs=jobs, checkpoint=root / "pretrained" / "resnet8-test.th",
                       ptq=TINY_PTQ, progress=False, **kw)


def _stable(path):
    return sorted((r["index"], r["kind"], r["bits"], r["top1"], r["size_mb"], r["bops_g"]) for r in read_rows(path))


_LOKY: dict = {}


def _loky_rows(root, tmp_path):
    """The loky table (jobs=2) of the tiny data root, built once: the fixture's data are the same in every test."""
    if "rows" not in _LOKY:
        _LOKY["rows"] = _stable(_build(root, tmp_path / "loky.csv"))
    return _LOKY["rows"]


def test_table_build_equals_loky(tiny_data_root, tmp_path, cluster):
    with use_backend("dask", cluster[0], jobs=2):
        dask = _build(tiny_data_root, tmp_path / "dask.csv")
    assert _stable(dask) == _loky_rows(tiny_data_root, tmp_path)
    assert [r[0] for r in _stable(dask)] == list(range(8))  # 4 anchors + 4 samples


def _resnet8(seed):
    from mqbench.networks.resnet_cifar import CifarResNet

    torch.manual_seed(seed)
    return CifarResNet(8), f"resnet8-init-{seed}"


def test_without_scheduler_a_local_cluster_of_jobs_workers_lives_for_the_block():
    with use_backend("dask", jobs=2) as backend:
        assert backend._cluster is None  # started on first use only
        assert map_items(abs, [-1, 2, -3], jobs=1, progress=False) == [1, 2, 3] and backend._cluster is None
        assert map_items(abs, [-1, 2, -3], jobs=2, progress=False) == [1, 2, 3]
        assert len(backend.client().scheduler_info()["workers"]) == 2
        with pytest.raises(ValueError, match="invalid literal"):  # a task's error keeps its type
            map_items(int, ["1", "x"], jobs=2, progress=False)
    assert backend._cluster is None and current_backend().name == "loky"


def test_extraction_equals_loky(cluster):
    from primitives import extract_many

    g = torch.Generator().manual_seed(5)
    batch = (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g), 5)
    loky = extract_many([1, 2, 3], _resnet8, batch, jobs=2, progress=False, hutchinson_probes=1)
    with use_backend("dask", cluster[0], jobs=2):
        dask = extract_many([1, 2, 3], _resnet8, batch, jobs=2, progress=False, hutchinson_probes=1)
    for a, b in zip(loky, dask, strict=True):
        assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
        for la, lb in zip(a.layers, b.layers):
            assert la.tensors.keys() == lb.tensors.keys()
            for key in la.tensors:
                assert torch.equal(la.tensors[key], lb.tensors[key]), (la.name, key)


def _log(run):
    rows = list(csv.reader(open(run / "log.csv")))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


def test_search_equals_loky(search_root, tmp_path, cluster):
    a, b = tmp_path / "loky", tmp_path / "dask"
    assert main(["search", *SEARCH, "--out", str(a)]) == 0
    assert main(["search", *SEARCH, "--out", str(b), "--backend", "dask", "--scheduler", cluster[0]]) == 0
    assert (a / "best.json").read_text() == (b / "best.json").read_text()
    assert _log(a) == _log(b)


def test_worker_killed_mid_build_loses_and_duplicates_nothing(tiny_data_root, tmp_path, cluster):
    address, client = cluster
    out = tmp_path / "killed.csv"
    killed = []

    def kill_a_busy_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            rows = len(out.read_text().splitlines()) - 1 if out.exists() else 0
            busy = [w for w, tasks in client.processing().items() if tasks]
            if rows >= 1 and busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, rows))
            time.sleep(0.02)

    thread = threading.Thread(target=kill_a_busy_worker, daemon=True)
    thread.start()
    with use_backend("dask", address, jobs=2):
        _build(tiny_data_root, out)
    thread.join()
    assert killed and killed[0][1] < 8, "the worker was not killed during the build"
    rows = read_rows(out)  # also refuses a duplicate index
    assert sorted(r["index"] for r in rows) == [i for i, _, _ in planned_rows_of(tiny_data_root, 4)]
    assert _stable(out) == _loky_rows(tiny_data_root, tmp_path)


def planned_rows_of(root, configs):
    from mqbench.networks.resnet_cifar import load_pretrained
    from mqbench.quant.fakequant import default_bit_layout

    model = load_pretrained(8, root / "pretrained" / "resnet8-test.th")
    return planned_rows(default_bit_layout(model, keep_first_last=True, allowed=(2, 3, 4), act_bits=TINY_PTQ.act_bits),
                        configs, 0)


def test_backend_options_are_checked(capsys):
    assert main(["table", "build", "--out", "x.csv", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --scheduler needs --backend dask"
