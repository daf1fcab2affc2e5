"""Copy the experiments' generated markdown tables into docs/results.md and README.md (between result markers).

    python -m experiments.readme [--check]

Each target holds blocks ``<!-- results:NAME/FILE.md -->`` ... ``<!-- /results -->``; each block's body
is replaced by the current content of ``results/NAME/FILE.md`` (or a note that it has not been
generated yet). Nothing else in the targets changes. docs/results.md holds every result table; README.md
holds the one headline table. ``--check`` writes nothing and exits 1 when a target is out of date.
"""
from __future__ import annotations

import argparse
import re

from experiments.common import REPO, RESULTS

BLOCK = re.compile(r"(<!-- results:(?P<file>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
TARGETS = ("docs/results.md", "README.md")


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        path = RESULTS / m.group("file")
        body = path.read_text().strip() + "\n" if path.exists() else f"(not generated yet: results/{m.group('file')})\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a target is out of date")
    args = p.parse_args(argv)
    stale = []
    for name in TARGETS:
        target = REPO / name
        text = target.read_text()
        new = render(text)
        if new == text:
            print(f"{name} already up to date: {len(BLOCK.findall(text))} result blocks")
        elif args.check:
            stale.append(name)
            print(f"{name} is out of date: run python -m experiments.readme")
        else:
            target.write_text(new)
            print(f"updated {name}: {len(BLOCK.findall(new))} result blocks")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
