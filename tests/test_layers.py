"""Structure checks: the import contracts in setup.cfg (import-linter) and module sizes."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch):
    """0 import circles between sibling modules, 0 upward imports between mqbench <- primitives <- evoproxy <- experiments."""
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True) == 0
