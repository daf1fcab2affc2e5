"""The evoproxy command: subcommands run end to end on a tiny data root; user errors are one line."""
from __future__ import annotations

import csv
import re

from evoproxy.cli import main

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_data_lists_found_items(tiny_data_root, capsys):
    assert main(["data"]) == 1  # the tiny root lacks the NATS table and the real checkpoints
    out = capsys.readouterr().out
    assert "cifar10" in out and "found" in out and "MISSING" in out


def test_demo_runs_on_tiny_data(tiny_data_root, capsys):
    nats = tiny_data_root / "nats-bench"
    nats.mkdir()
    with open(nats / "nats_tss_cifar10.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("ArchitectureString", "CIFAR10TestAccuracy200Epochs"), (ARCH, 93.5)])
    assert main(["demo", "--index", "0", "--batch", "10", "--probes", "1"]) == 0
    out = capsys.readouterr().out
    assert "93.50%" in out and "classifier" in out and "53 layers" in out


def test_bad_arch_is_one_line_error(tiny_data_root, capsys):
    assert main(["demo", "--arch", "|conv_9x9~0|+|x|", "--batch", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_table_build_resume_and_compare(tiny_data_root, tmp_path, capsys):
    out = tmp_path / "t.csv"
    args = ["table", "build", "--model", "resnet8", "--configs", "3", "--jobs", "1", "--calib-images", "20",
            "--checkpoint", str(tiny_data_root / "pretrained" / "resnet8-test.th"), "--out", str(out)]
    assert main(args + ["--limit", "2"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 1 + 3 + 4
    assert main(["table", "compare", str(out), str(out)]) == 0
    assert "Spearman 1.0000" in capsys.readouterr().out
    assert main(["bench", "compare", str(out), str(out)]) == 0  # the old name still works, with a note
    got = capsys.readouterr()
    assert "Spearman 1.0000" in got.out and "'evoproxy bench' is now 'evoproxy table'" in got.err
    from evoproxy.cli import build_parser

    assert not re.search(r"\bbench\b", build_parser().format_help())  # not listed: --bench names a benchmark
    assert main(args[:-1] + [str(tmp_path / "missing" / "x.csv"), "--model", "resnet7"]) == 2


def test_every_search_setting_is_a_cli_option():
    """The CLI is derived from SearchConfig: every field has an option, with the field's default."""
    import dataclasses

    from evoproxy.cli import build_parser
    from evoproxy.evolution.searchconfig import SearchConfig

    parser = build_parser()
    args = parser.parse_args(["search", "--bench", "b", "--out", "o"])
    for f in dataclasses.fields(SearchConfig):
        assert hasattr(args, f.name), f.name
    d = SearchConfig(bench="b", out="o")
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)} == dataclasses.asdict(d)
    args = parser.parse_args(["search", "--bench", "b", "--out", "o", "--cx-prob", "0.3", "--mut-prob", "0.6",
                              "--screen-samples", "5", "--max-chain", "1", "--noise-std",
                              "0.05", "--no-diversity", "--quiet", "--weights", "log=2", "--terminals", "weight,act_out"])
    assert (args.cx_prob, args.mut_prob, args.screen_samples, args.max_chain, args.noise_std) == \
        (0.3, 0.6, 5, 1, 0.05)
    assert args.diversity is False and args.progress is False and args.weights == {"log": 2.0}
    assert args.terminals == ["weight", "act_out"]


def test_screen_time_is_retired_yet_old_settings_load(capsys):
    """Issue 22 item 4: --screen-time was accepted and ignored. The option is gone; a screen_time in old settings
    (Python) or in a committed run's config.json still loads, is ignored and is not written again."""
    import dataclasses
    import json
    from pathlib import Path

    import pytest

    from evoproxy.cli import build_parser
    from evoproxy.estimator import ProxySearch
    from evoproxy.evolution.searchconfig import LATER_KEYS, SearchConfig
    from experiments.common import finished_run

    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--bench", "b", "--out", "o", "--screen-time", "2.5"])
    assert "--screen-time" in capsys.readouterr().err
    config = SearchConfig(bench="b", out="o", screen_time=2.5)
    assert config == SearchConfig(bench="b", out="o") and "screen_time" not in config.portable()
    assert dataclasses.replace(config, seed=1).seed == 1
    ProxySearch(screen_time=2.5)  # an old ProxySearch setting is not an unknown one
    root = Path(__file__).resolve().parent.parent
    runs = [p.parent for p in sorted((root / "results").rglob("config.json")) if (p.parent / "log.csv").exists()]
    old = [r for r in runs if "screen_time" in json.loads((r / "config.json").read_text())]
    assert old, "no committed config.json with screen_time left to check"
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for run in old[:5]:
        saved = json.loads((run / "config.json").read_text())
        before = {k: v for k, v in LATER_KEYS.items() if k not in saved}  # settings the run predates: their old values
        config = SearchConfig(**before, **{k: v for k, v in saved.items() if k in fields or k == "screen_time"})
        config = dataclasses.replace(config, out=str(run))
        assert finished_run(config), run  # the same settings as the committed run: reused, not searched again


def test_table_build_out_that_cannot_be_written_is_one_line(tiny_data_root, unwritable_folder, capsys):
    """Issue 22 item 8: table build --out in a folder that cannot be written ended in an OSError traceback
    from the table's lock file (or the mkdir of a new subfolder); now one line naming the folder, exit 2."""
    import pytest

    from mqbench.bench.build import build_table
    from mqbench.errors import DataError

    ckpt = tiny_data_root / "pretrained" / "resnet8-test.th"
    for command, out in (("table", unwritable_folder / "t.csv"), ("table", unwritable_folder / "sub" / "t.csv")):
        code = main([command, "build", "--model", "resnet8", "--configs", "1", "--jobs", "1", "--calib-images", "20",
                     "--checkpoint", str(ckpt), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: --out: ") and f"{unwritable_folder} cannot be written" in err, err
    with pytest.raises(DataError, match=f"folder {unwritable_folder} cannot be written"):  # the library answers too
        build_table("resnet8", 1, 0, unwritable_folder / "t.csv", checkpoint=ckpt, progress=False)


def test_scheduler_with_one_job_is_a_one_line_warning(search_root, capsys):
    """Issue 22 item 8: --scheduler was silently ignored with --jobs 1 (every item runs in this process)."""
    from evoproxy.cli import build_parser
    from evoproxy.preflight import scheduler_warning

    args = ["evaluate", "--bench", "nb201-cifar10", "--proxy", "params", "--samples", "3", "--batch", "4",
            "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"]
    assert main(args + ["--jobs", "1"]) == 0  # no scheduler listens there: nothing connects to it
    err = capsys.readouterr().err
    assert "Traceback" not in err and not [line for line in err.splitlines() if line.startswith("error:")]
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: --scheduler tcp://127.0.0.1:9 is not used with --jobs 1"), warning
    parser = build_parser()
    assert scheduler_warning(parser.parse_args(args + ["--jobs", "2"])) is None
    assert scheduler_warning(parser.parse_args(["search", "--bench", "b", "--out", "o", "--backend", "dask",
                                                "--scheduler", "tcp://h:8786"])).startswith("warning: --scheduler")
    assert scheduler_warning(parser.parse_args(["search", "--bench", "b", "--out", "o", "--backend", "dask"])) is None
