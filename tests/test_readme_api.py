"""The README's "From Python" block runs as written, on small samples of the real data."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# (as written in the README, what the test runs instead): same calls, small samples
SMALLER = [
    ('samples=100, time_budget=120, seed=0', 'samples=8, population=6, generations=1, batch=16, seed=0'),
    ('samples=200, seed=1', 'samples=6, seed=1, batch=16'),
]


def _block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    code = match.group(1)
    for old, new in SMALLER:
        assert old in code, f"README block changed: {old!r} not found (update SMALLER)"
        code = code.replace(old, new)
    return code


def test_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    from mqbench.data.dataroot import locate

    if not all(locate(k) for k in ("cifar10", "nats-tss-cifar10", "resnet20")):
        pytest.skip("needs the shared data (CIFAR-10, NAS-Bench-201, ResNet-20)")
    monkeypatch.chdir(tmp_path)
    exec(compile(_block(), "README.md:api-example", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    for name in ("my_proxy.py", "progress.png", "scatter.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| synflow |" in out
    exported = (tmp_path / "my_proxy.py").read_text()
    assert "def score(" in exported and "import evoproxy" not in exported
