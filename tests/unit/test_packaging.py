"""One import namespace: the repository's four folders install as ``relaybus`` and nothing else.

pyproject.toml maps ``project/`` to ``relaybus`` and ``tasks/``, ``sagas/``, ``eventstore/`` to its
subpackages, with an explicit ``packages`` list; these tests keep that list honest and check that the
folders cannot be imported a second time under their own, generic names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"project": "relaybus", "tasks": "relaybus.tasks", "sagas": "relaybus.sagas",
           "eventstore": "relaybus.eventstore"}


def setuptools_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


def packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    """Every folder with an ``__init__.py`` under the mapped folders, by the dotted name it installs as."""
    found: set[str] = set()
    for name, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            if "__pycache__" in relative.parts:
                continue
            found.add(".".join((name, *relative.parts)))
    return found


def test_package_dir_maps_exactly_the_four_folders_into_relaybus() -> None:
    package_dir = setuptools_config()["package-dir"]
    assert {folder: name for name, folder in package_dir.items()} == FOLDERS
    for folder in FOLDERS:
        assert (ROOT / folder / "__init__.py").is_file(), folder


def test_the_packages_list_is_exactly_the_package_folders_mapped_through_package_dir() -> None:
    config = setuptools_config()
    listed = config["packages"]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(p for p in listed if listed.count(p) > 1)}"
    on_disk = packages_on_disk(config["package-dir"])
    assert sorted(on_disk - set(listed)) == [], "package folders missing from [tool.setuptools] packages"
    assert sorted(set(listed) - on_disk) == [], "[tool.setuptools] packages lists folders that do not exist"
    # Only relaybus: never bench, tests, or a folder under its own name.
    assert [p for p in listed if p != "relaybus" and not p.startswith("relaybus.")] == []


# Run from the repository root, where the folders are importable by their own names (sys.path[0] is the
# cwd for ``python -c``). Each folder must refuse, naming the import to use; relaybus itself then loads
# without any module under a folder's name appearing.
_IMPORT_BY_FOLDER_NAME = """
import importlib, json, sys

folders = json.loads(sys.argv[1])
refused = {}
for folder in folders:
    try:
        importlib.import_module(folder)
    except ImportError as exc:
        refused[folder] = str(exc)
    else:
        refused[folder] = None
after_refusal = sorted(m for m in sys.modules if m.split(".")[0] in folders)

import relaybus.tasks.runtime.task

print(json.dumps({
    "refused": refused,
    "after_refusal": after_refusal,
    "after_relaybus": sorted(m for m in sys.modules if m.split(".")[0] in folders),
    "loaded_from": relaybus.tasks.runtime.task.__file__,
}))
"""


def test_importing_a_folder_by_its_own_name_from_the_repository_root_fails_and_names_the_relaybus_import() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", _IMPORT_BY_FOLDER_NAME, json.dumps(sorted(FOLDERS))],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])

    for folder, installed_as in FOLDERS.items():
        message = report["refused"][folder]
        assert message is not None, f"`import {folder}` from the repository root succeeded"
        assert f"import {installed_as}," in message, message
    assert report["after_refusal"] == [], "a refused import left modules behind"
    assert report["after_relaybus"] == [], "importing relaybus loaded modules under a folder's own name"
    assert Path(report["loaded_from"]) == ROOT / "tasks" / "runtime" / "task.py"


def test_every_public_name_resolves_and_the_publish_errors_are_public() -> None:
    """``relaybus.__all__`` is the public API: each name imports, and what ``start``/``publish`` raise when the
    broker does not take a message is catchable without reaching into ``relaybus.tasks.errors``."""
    import relaybus
    from relaybus.tasks import errors

    missing = [name for name in relaybus.__all__ if getattr(relaybus, name, None) is None]
    assert not missing
    assert relaybus.PublishFailed is errors.PublishFailed
    assert issubclass(relaybus.PublishTimeout, relaybus.PublishFailed)
    assert issubclass(relaybus.BrokerUnreachable, relaybus.PublishFailed)
