"""Committed tables and run folders must work on any machine: checkpoints are found by file name in the
user's data root and verified by sha256, all-fail runs say so, and no committed file holds an
absolute path of the machine that made it."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from evoproxy.cli import main
from mqbench.data.dataroot import REPO_ROOT, data_root, portable_path, resolve_portable
from mqbench.networks.resnet_cifar import CifarResNet
from mqbench.quant.ptq import PTQSettings

TINY_PTQ = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10)
CKPT = "resnet8-test.th"


def _second_root(first, tmp_path, monkeypatch, same_weights: bool):
    """Another data root: the same CIFAR tree, and a checkpoint under the same name (same or other weights)."""
    root = tmp_path / "elsewhere" / "data"
    shutil.copytree(first / "cifar10", root / "cifar10")
    (root / "pretrained").mkdir(parents=True)
    if same_weights:
        shutil.copy(first / "pretrained" / CKPT, root / "pretrained" / CKPT)
    else:
        torch.manual_seed(1)
        state = {f"module.{k}": v for k, v in CifarResNet(8).state_dict().items()}
        torch.save({"state_dict": state}, root / "pretrained" / CKPT)
    monkeypatch.setenv("EVOPROXY_DATA", str(root))
    return root


@pytest.fixture
def built_table(tiny_data_root, tmp_path):
    from mqbench.bench.build import build_table

    out = build_table("resnet8", 6, 0, tmp_path / "t.csv", jobs=1, checkpoint=tiny_data_root / "pretrained" / CKPT,
                      ptq=TINY_PTQ, progress=False)
    meta = json.loads((tmp_path / "t.csv.meta.json").read_text())
    assert meta["checkpoint_file"] == CKPT and "checkpoint" not in meta
    assert str(tiny_data_root) not in json.dumps(meta)
    return out


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _evaluate(table, capsys, *extra):
    code = main(["evaluate", "--bench", "mq-resnet20-cifar10", "--table", str(table), "--proxy", "bit_sum",
                 "--samples", "5", "--split", "all", "--batch", "10", "--json", *extra])
    cap = capsys.readouterr()
    return code, cap


def test_table_built_in_one_root_evaluates_from_another(built_table, tiny_data_root, tmp_path, monkeypatch, capsys):
    code, cap = _evaluate(built_table, capsys)
    assert code == 0
    here = json.loads(cap.out.strip().splitlines()[-1])
    _second_root(tiny_data_root, tmp_path, monkeypatch, same_weights=True)
    shutil.rmtree(tiny_data_root)  # the building machine's files are gone
    code, cap = _evaluate(built_table, capsys)
    assert code == 0, cap.err
    there = json.loads(cap.out.strip().splitlines()[-1])
    assert there["failed"] == 0 and there["spearman"] == here["spearman"]


def test_other_weights_under_the_same_name_are_one_line_sha_error(built_table, tiny_data_root, tmp_path, monkeypatch,
                                                                  capsys):
    from mqbench.data.dataroot import file_sha256

    expected = file_sha256(tiny_data_root / "pretrained" / CKPT)
    root = _second_root(tiny_data_root, tmp_path, monkeypatch, same_weights=False)
    code, cap = _evaluate(built_table, capsys)
    assert code != 0
    (err,) = _error_lines(cap.err)
    assert expected in err and CKPT in err and str(root / "pretrained" / CKPT) in err


def test_missing_checkpoint_names_file_sha_place_and_source(built_table, tiny_data_root, tmp_path, monkeypatch, capsys):
    root = _second_root(tiny_data_root, tmp_path, monkeypatch, same_weights=True)
    moved = tmp_path / "mine.th"
    shutil.move(root / "pretrained" / CKPT, moved)
    code, cap = _evaluate(built_table, capsys)
    (err,) = _error_lines(cap.err)
    assert code != 0
    assert "not found" in err and CKPT in err and "sha256" in err and str(root / "pretrained") in err
    assert "official source" in err
    code, cap = _evaluate(built_table, capsys, "--checkpoint", str(moved))  # explicit file: works
    assert code == 0, cap.err


def test_old_metadata_absolute_path_is_ignored_with_a_note(built_table, tiny_data_root, tmp_path, monkeypatch, capsys):
    meta_path = tmp_path / "t.csv.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["checkpoint"] = "/nowhere/builders/machine/" + meta.pop("checkpoint_file")
    meta_path.write_text(json.dumps(meta))
    _second_root(tiny_data_root, tmp_path, monkeypatch, same_weights=True)
    code, cap = _evaluate(built_table, capsys)
    assert code == 0, cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["failed"] == 0
    assert "note:" in cap.err and "/nowhere/builders/machine" in cap.err


def test_all_fail_evaluate_exits_non_zero_with_one_line(built_table, tmp_path, monkeypatch, capsys):
    import evoproxy.scoring.baselines as baselines

    def broken(ctx):
        """Always raises (a proxy that fails on every item)."""
        raise RuntimeError("deliberately broken proxy")

    broken.proxy_name, broken.kind, broken.needs = "broken_mq", "mq", ()
    monkeypatch.setitem(baselines._REGISTRY, "broken_mq", broken)
    code = main(["evaluate", "--bench", "mq-resnet20-cifar10", "--table", str(built_table), "--proxy", "broken_mq",
                 "--samples", "5", "--split", "all", "--batch", "10", "--json"])
    err = _error_lines(capsys.readouterr().err)
    assert code != 0 and len(err) == 1, err
    assert "all 5 items failed" in err[0] and "deliberately broken proxy" in err[0]
    # some items failing is not an error: the count stays in the report
    calls = {"n": 0}

    def flaky(ctx):
        """Fails on the first item it sees, scores the rest."""
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first one fails")
        return float(calls["n"])

    flaky.proxy_name, flaky.kind, flaky.needs = "flaky_mq", "mq", ()
    monkeypatch.setitem(baselines._REGISTRY, "flaky_mq", flaky)
    code = main(["evaluate", "--bench", "mq-resnet20-cifar10", "--table", str(built_table), "--proxy", "flaky_mq",
                 "--samples", "5", "--split", "all", "--batch", "10", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed"] == 1


def test_portable_paths_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path / "data"))
    inside = REPO_ROOT / "results" / "x" / "config.json"
    assert portable_path(inside) == "results/x/config.json"
    assert resolve_portable("results/x/config.json") == inside
    in_data = data_root() / "pretrained" / "a.th"
    assert portable_path(in_data) == "$EVOPROXY_DATA/pretrained/a.th"
    assert resolve_portable("$EVOPROXY_DATA/pretrained/a.th") == in_data
    assert portable_path(None) is None


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO_ROOT / p for p in out.decode().split("\0") if p]


# a value that is an absolute path on some machine: /a/b... (two components or more) or a Windows drive path
_ABSOLUTE = re.compile(r"^(?:(/[^/\s]+){2,}|[A-Za-z]:[\\/]\S)")
DATA_SUFFIXES = (".json", ".csv", ".toml")


def _strings(obj):
    """Every string of a decoded JSON/TOML document, keys included."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _data_values(path, text):
    """The string values of a data file (JSON/TOML strings, CSV cells)."""
    if path.suffix == ".json":
        yield from _strings(json.loads(text))
    elif path.suffix == ".toml":
        import tomllib

        yield from _strings(tomllib.loads(text))
    elif path.suffix == ".csv":
        import csv
        import io

        for row in csv.reader(io.StringIO(text)):
            yield from row


def _repo_location(text, repo_root):
    """Places where ``text`` names a file of this checkout by its absolute path (``<repo root>/<existing entry>``;
    a command quoting some other folder that merely shares the prefix is no hit)."""
    pattern = re.escape(str(repo_root).rstrip("/")) + r"/([^/\s\"'`,;:)\]]+)"
    return [m.group(0) for m in re.finditer(pattern, text) if (repo_root / m.group(1)).exists()]


def machine_paths(files, repo_root) -> list[str]:
    """``file: value`` for every absolute machine path in ``files``: any absolute path stored as a value of a data
    file (JSON, CSV, TOML), and the checkout's own absolute location in any text file. Judged by content only:
    where the user's data root lives plays no part."""
    offenders = []
    for path in files:
        if not path.is_file() or path.suffix in (".png", ".jpg", ".th", ".pth", ".gz"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(repo_root) if path.is_relative_to(repo_root) else path
        offenders += [f"{rel}: {hit}" for hit in _repo_location(text, repo_root)]
        if path.suffix in DATA_SUFFIXES:
            offenders += [f"{rel}: {v}" for v in _data_values(path, text) if _ABSOLUTE.match(v.strip())]
    return offenders


def test_no_committed_file_holds_a_machine_path():
    """No committed data file stores an absolute path, and no committed file names this checkout by its absolute
    location (on any machine: the check does not depend on where this clone or the data root lives)."""
    offenders = machine_paths(_tracked_files(), REPO_ROOT)
    assert not offenders, offenders[:10]


def test_machine_path_check_bites_and_ignores_the_data_root(tmp_path, monkeypatch):
    """The check finds absolute paths in JSON, CSV and TOML values and the checkout's location in any text file,
    and passes a README that quotes a command under /tmp while the data root sits directly under /tmp (issue 22
    item 7: the former check matched the data root's parent, /tmp/, in mqbench/tables/README.md)."""
    repo = tmp_path / "clone"
    (repo / "results").mkdir(parents=True)
    files = {
        "a.json": json.dumps({"checkpoint": "/home/alice/data/pretrained/r.th", "out": "results/x"}),
        "b.csv": "id,path\n0,results/x\n1,/srv/tables/t.csv\n",
        "c.toml": 'table = "D:\\\\tables\\\\t.csv"\nname = "x"\n',
        "notes.md": f"see {repo}/results/run for the run\n",
        "README.md": "time it: `evoproxy table build --out /tmp/speed/t.csv`; a/b ratio, 1/2 of it\n",
        "ok.json": json.dumps({"table": "mqbench/tables/t.csv", "ckpt": "$EVOPROXY_DATA/pretrained/r.th",
                               "formula": "G / W", "ratio": "1/2"}),
    }
    for name, text in files.items():
        (repo / name).write_text(text)
    found = machine_paths([repo / name for name in files], repo)
    assert found == ["a.json: /home/alice/data/pretrained/r.th", "b.csv: /srv/tables/t.csv", "c.toml: D:\\tables\\t.csv",
                     f"notes.md: {repo}/results"], found
    monkeypatch.setenv("EVOPROXY_DATA", "/tmp/data")  # a data root directly under /tmp: nothing changes
    assert machine_paths([repo / "README.md", repo / "ok.json"], repo) == []
    assert data_root() == Path("/tmp/data") and "/tmp/" in (REPO_ROOT / "mqbench" / "tables" / "README.md").read_text()
    assert not machine_paths([REPO_ROOT / "mqbench" / "tables" / "README.md"], REPO_ROOT)


def test_search_whose_samples_all_fail_exits_non_zero_with_one_line(search_root, tmp_path, monkeypatch, capsys):
    import primitives.core as core

    args = ["--bench", "nb201-cifar10", "--samples", "8", "--population", "6", "--generations", "1", "--batch", "8",
            "--quiet"]

    def broken(*args, **kwargs):
        raise RuntimeError("extraction exploded")

    monkeypatch.setattr(core, "extract", broken)
    code = main(["search", *args, "--out", str(tmp_path / "run")])
    err = _error_lines(capsys.readouterr().err)
    assert code != 0 and len(err) == 1, err
    assert "search samples failed" in err[0] and "extraction exploded" in err[0] and "8" in err[0]


def test_cache_root_is_safe_when_workers_probe_it_at_once(tmp_path, monkeypatch):
    """Many processes (here threads) asking for the cache root at once all get it (a shared probe file
    name made some of them see an unwritable cache, so items failed at random under --jobs 2)."""
    from concurrent.futures import ThreadPoolExecutor

    from mqbench.data.dataroot import cache_root

    monkeypatch.setenv("EVOPROXY_CACHE", str(tmp_path / "shared-cache"))
    with ThreadPoolExecutor(8) as pool:
        roots = list(pool.map(lambda _: cache_root(), range(400)))
    assert set(roots) == {tmp_path / "shared-cache"}
    assert not [p for p in (tmp_path / "shared-cache").iterdir() if p.name.startswith(".write-probe")]
