"""The repository's promises: the README's commands, CI running them, and the import layers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_gives_exactly_two_set_up_and_go_commands_demo_then_tests():
    demo, tests = readme_commands()
    assert demo.endswith("relaybus demo")
    assert "pytest" in tests


def test_ci_runs_the_test_command_the_readme_gives():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def installed_tree(dest: Path) -> Path:
    """The package as the wheel lays it out (``relaybus/``, ``relaybus/tasks/``, …), copied from the folders.

    Static tools (import-linter, mypy) walk folders, not the editable install's import hook, so they are given
    the tree the wheel installs.
    """
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in sorted(pyproject["tool"]["setuptools"]["package-dir"].items()):
        target = dest.joinpath(*name.split("."))
        shutil.copytree(ROOT / folder, target, ignore=ignore, dirs_exist_ok=True)
    return dest


def test_dependencies_point_one_way_toward_eventstore(tmp_path):
    tree = installed_tree(tmp_path)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tree)})
    assert "0 broken" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0


def test_the_packages_pass_ruff_and_strict_mypy(tmp_path):
    bin_dir = Path(sys.executable).parent
    lint = subprocess.run([str(bin_dir / "ruff"), "check", "project", "tasks", "sagas", "eventstore", "bench", "tests",
                           "examples"],
                          cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    tree = installed_tree(tmp_path)
    types = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                            "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "relaybus"],
                           cwd=tree, capture_output=True, text=True, timeout=600)
    assert types.returncode == 0, types.stdout + types.stderr
