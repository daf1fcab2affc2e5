"""Copy the experiments' generated markdown tables into README.md (between result markers).

    python -m experiments.readme

README.md holds blocks ``<!-- results:NAME/FILE.md -->`` ... ``<!-- /results -->``; each block's body
is replaced by the current content of ``results/NAME/FILE.md`` (or a note that it has not been
generated yet). Nothing else in README.md changes.
"""
from __future__ import annotations

import re

from experiments.common import REPO, RESULTS

BLOCK = re.compile(r"(<!-- results:(?P<file>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        path = RESULTS / m.group("file")
        body = path.read_text().strip() + "\n" if path.exists() else f"(not generated yet: results/{m.group('file')})\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


def main(argv=None) -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    new = render(text)
    if new != text:
        readme.write_text(new)
        print(f"updated {readme.relative_to(REPO)}: {len(BLOCK.findall(new))} result blocks")
    else:
        print("README.md already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
