"""The ``evoproxy`` command: a thin argparse layer over the library.

Each subcommand is registered with ``@command(name, help)`` and receives the parsed arguments.
User errors (:class:`evoproxy.errors.EvoproxyError`) are printed as one line and exit with 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from evoproxy.errors import EvoproxyError

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args) -> int|None`` as subcommand ``name``; ``configure`` adds its options."""

    def wrap(fn: Callable) -> Callable:
        _COMMANDS[name] = (help, configure, fn)
        return fn

    return wrap


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@command("data", "list the datasets, tables and checkpoints the project knows, found or missing")
def cmd_data(args: argparse.Namespace) -> int:
    from mqbench.dataroot import cache_root, data_root, inventory

    rows = inventory()
    print(f"data root: {data_root()}  (set EVOPROXY_DATA to change)")
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        status = "found  " if r["found"] else ("MISSING" if r["required"] else "absent ")
        print(f"  {r['key']:<{width}}  {status}  {_human_size(r['size']):>9}  {r['path']}")
        if not r["found"]:
            print(f"  {'':<{width}}  -> {r['what']}; official source: {r['source']}")
    try:
        print(f"cache: {cache_root()}  (set EVOPROXY_CACHE to change)")
    except EvoproxyError as exc:
        print(f"cache: unavailable ({exc})")
    missing = [r["key"] for r in rows if r["required"] and not r["found"]]
    if missing:
        print(f"{len(missing)} required item(s) missing: {', '.join(missing)}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evoproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, configure, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._fn(args) or 0)
    except EvoproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
