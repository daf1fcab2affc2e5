"""Structure checks: the import contracts in setup.cfg (import-linter) and module sizes."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch):
    """0 import circles between sibling modules, 0 upward imports between mqbench <- primitives <- evoproxy <- experiments, and the kernels copied into exports import no third-party package but torch."""
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True) == 0


def test_modules_stay_small():
    """No library module over 500 lines; the export module under 300 (it assembles kernels, it holds none)."""
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for pkg in ("mqbench", "primitives", "evoproxy", "experiments") for p in (ROOT / pkg).rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 500} == {}
    assert sizes["evoproxy/export.py"] < 300
