"""The layering contract (pyproject.toml, [tool.importlinter]): imports run one way, from the bottom up.

The contract is checked with import-linter on the real package; a copy of the package with one upward
import added shows the check is not vacuous.
"""

import logging
import shutil
import sys
from pathlib import Path

import pytest

importlinter_cli = pytest.importorskip("importlinter.cli", reason="import-linter is a dev dependency")

ROOT = Path(__file__).resolve().parents[1]


def lint(root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "moco" or m.startswith("moco.")]:
        monkeypatch.delitem(sys.modules, name)
    # import-linter configures logging with disable_existing_loggers: keep the "moco" logger (and every other)
    # as it was, or each later test that reads the warnings it logs finds none
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        monkeypatch.setattr(lg, "disabled", lg.disabled)
    return importlinter_cli.lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True, no_logo=True)


def test_the_package_keeps_its_layers(monkeypatch):
    assert lint(ROOT, monkeypatch) == 0


def test_an_upward_import_breaks_the_contract(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "moco", copy / "moco", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    schedules = copy / "moco" / "schedules.py"  # a low layer reaching up into the training loop
    schedules.write_text(schedules.read_text() + "\nfrom moco.training.loop import train_step  # noqa\n")
    assert lint(copy, monkeypatch) != 0
    assert "moco.schedules -> moco.training.loop" in capsys.readouterr().out


def long_functions(package: Path, limit: int = 60) -> list[str]:
    """Every function of ``package`` longer than ``limit`` lines (its decorators aside), as PATH:LINE NAME (N)."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_the_package_is_longer_than_sixty_lines(tmp_path):
    assert long_functions(ROOT / "moco") == []
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n" + "    x = 1\n" * 60)  # 61 lines: found
    assert long_functions(pkg) == ["pkg/m.py:1 f (61 lines)"]
