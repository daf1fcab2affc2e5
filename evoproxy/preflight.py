"""Checks of a command's parsed options before it starts any work (called by :func:`evoproxy.cli.main`).

* an output that cannot be written is one line naming the folder, at once, instead of an ``OSError``
  traceback when the run folder or the table's lock file is created;
* ``--scheduler`` with ``--jobs 1`` is a one-line warning: every item then runs in this process and the
  Dask cluster is never used.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# command function -> where its --out goes: "folder" (the run folder itself) or "file" (a file in a folder)
OUT_KINDS = {"cmd_search": "folder", "cmd_table": "file", "cmd_calibrate": "file"}


def check_outputs(args: argparse.Namespace) -> None:
    """DataError (one line) when the command's ``--out`` cannot be written; commands without one pass."""
    from mqbench.fileio import check_writable_folder

    kind = OUT_KINDS.get(getattr(getattr(args, "_fn", None), "__name__", ""))
    out = getattr(args, "out", None)
    if kind is None or not out or getattr(args, "table_command", "build") != "build":
        return
    check_writable_folder(out if kind == "folder" else Path(out).parent, "--out")


def scheduler_warning(args: argparse.Namespace) -> str | None:
    """The warning for a Dask scheduler that ``--jobs 1`` leaves unused (None when there is nothing to say)."""
    scheduler, jobs = getattr(args, "scheduler", None), getattr(args, "jobs", 1)
    if scheduler and getattr(args, "backend", None) == "dask" and jobs == 1:
        return (f"warning: --scheduler {scheduler} is not used with --jobs 1 (every item runs in this process); "
                "pass --jobs about the cluster's worker count")
    return None


def preflight(args: argparse.Namespace) -> None:
    """Both checks: the warning on stderr, then a DataError for an output that cannot be written."""
    warning = scheduler_warning(args)
    if warning:
        print(warning, file=sys.stderr)
    check_outputs(args)
