"""Checks of a command's parsed options before it starts any work (called by :func:`evoproxy.cli.main`).

* an output that cannot be written is one line naming the folder, at once, instead of an ``OSError``
  traceback when the run folder or the table's lock file is created.
"""
from __future__ import annotations

import argparse
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


def preflight(args: argparse.Namespace) -> None:
    """Every check of this module (a DataError for an output that cannot be written)."""
    check_outputs(args)
