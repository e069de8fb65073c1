"""relaybus as users get it: built as a wheel, installed into a clean virtualenv, run beside a Django site.

The wheel must hold one top-level name, ``relaybus``. The site has its own ``project/`` package (what
``django-admin startproject project .`` makes) and its own ``tasks.py`` (an invoke file): generic names
the repository's folders once installed under. A real worker started from the clean venv in the site's
folder, and the site's management command, run the reference ``research`` pipeline to completion while
``project`` and ``tasks`` stay the site's own.

The clean venv gets relaybus's dependencies without downloading them: a ``.pth`` file lists this venv's
site-packages. Python does not process ``.pth`` files found in a directory added that way, so the editable
install's finder stays inert and only the wheel's ``relaybus`` is importable there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from relaybus.celery import create_app, topology_of
from relaybus.eventstore import open_store, types
from relaybus.settings import Settings
from tests.harness import ROOT, consumer_count, delete_namespace, make_settings, wait_for
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
#: Build droppings and local state that are not sources (as in .gitignore).
NOT_SOURCES = ("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".relaybus", "*.sqlite*", "*.db")


def run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def source_files() -> dict[str, Path]:
    """What the wheel should hold of relaybus: every source file of the mapped folders, by its name in it."""
    files: dict[str, Path] = {}
    for package, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        for path in base.rglob("*"):
            relative = path.relative_to(base)
            if path.is_dir() or any(fnmatch(part, pattern) for part in relative.parts for pattern in NOT_SOURCES):
                continue
            files["/".join((*package.split("."), *relative.parts))] = path
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the repository's sources.

    A copy, because setuptools builds in the source tree and packs its ``build/lib``, which keeps files
    from earlier builds: a module deleted or renamed in the repository would still ship, and hide the
    failure this test is for. The copy holds what the build reads: pyproject.toml, the readme, the folders.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGE_DIR.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", dist, src], cwd=tmp)
    (built,) = dist.glob("relaybus-*.whl")
    return built


@dataclass(frozen=True)
class CleanVenv:
    root: Path
    python: Path
    site_packages: Path

    def bin(self, name: str) -> Path:
        return self.python.parent / name


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanVenv:
    root = tmp_path_factory.mktemp("venv") / "clean"
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    python = root / "bin" / "python"
    # This venv's pip installs into the clean one (--python): no pip to bootstrap there, nothing downloaded.
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=root.parent)
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root.parent).stdout.strip())
    (site_packages / "relaybus_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return CleanVenv(root, python, site_packages)


def test_the_wheel_holds_only_relaybus_with_its_migrations_and_data_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        # setuptools' legacy record of the top-level names, where it still writes one.
        legacy = f"{dist_info}/top_level.txt"
        top_level = archive.read(legacy).decode().split() if legacy in names else ["relaybus"]

    assert {n.split("/")[0] for n in names} == {"relaybus", dist_info}
    assert dist_info.startswith("relaybus-")
    assert top_level == ["relaybus"]

    revisions = sorted(p.name for p in (ROOT / "eventstore" / "migrations" / "versions").glob("*.py"))
    assert revisions, "no alembic revisions in the repository?"
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("relaybus/eventstore/migrations/versions/"))
    assert shipped == revisions
    for needed in ("relaybus/eventstore/migrations/env.py", "relaybus/eventstore/migrations/script.py.mako",
                   "relaybus/tasks/tools/corpus.json", "relaybus/eventstore/py.typed"):
        assert needed in names, needed

    # Every file of the folders ships (a new data file needs its package-data pattern), and nothing else does.
    expected = source_files()
    shipped_files = {n for n in names if n.startswith("relaybus/")}
    assert sorted(set(expected) - shipped_files) == [], "source files missing from the wheel (package-data?)"
    assert sorted(shipped_files - set(expected)) == [], "files in the wheel that are not in the folders"


# --- the Django site ------------------------------------------------------------------------------------

SITE_TASKS = '''\
"""The site's own task file for invoke (``invoke check``): a generic top-level name, and the site's."""

SITE_TASKS = True


def check(c):
    c.run("python manage.py check")
'''

ORDERS_PROBE = '''\
"""Loaded by relaybus in the worker and in the client (RELAYBUS_EXTRA_MODULES): records, per process,
where the generic top-level names resolve."""

import json
import os
import sys
from pathlib import Path

import project
import relaybus
import tasks

GENERIC = {"project", "tasks", "sagas", "eventstore"}


def where():
    return {
        "argv": sys.argv,
        "executable": sys.executable,
        "relaybus": relaybus.__file__,
        "project": project.__file__,
        "tasks": tasks.__file__,
        "site_tasks": getattr(tasks, "SITE_TASKS", False),
        "generic_modules": {
            name: getattr(module, "__file__", None)
            for name, module in list(sys.modules.items())
            if name.split(".")[0] in GENERIC
        },
    }


Path(os.environ["ORDERS_PROBE_DIR"], f"{os.getpid()}.json").write_text(json.dumps(where()))
'''

START_PIPELINE = '''\
"""Start relaybus's reference research pipeline from this site, wait for it, print how it ended as JSON."""

import json

from django.core.management.base import BaseCommand

from orders.probe import where
from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.pipelines.client import start


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("request")
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, **options):
        app = create_app(Settings())  # RELAYBUS_* from the environment
        handle = start("research", {"request": options["request"]}, app=app)
        outcome = handle.wait(timeout=options["timeout"])
        self.stdout.write(json.dumps({"outcome": outcome.model_dump(mode="json"), "process": where()}))
'''


def make_site(venv: CleanVenv, folder: Path) -> Path:
    """``django-admin startproject project .``, an invoke ``tasks.py`` and an ``orders`` app."""
    folder.mkdir()
    run([venv.python, "-m", "django", "startproject", "project", "."], cwd=folder, env=site_env({}))
    (folder / "tasks.py").write_text(SITE_TASKS)
    commands = folder / "orders" / "management" / "commands"
    commands.mkdir(parents=True)
    for package in (commands, commands.parent, commands.parent.parent):
        (package / "__init__.py").write_text("")
    (folder / "orders" / "probe.py").write_text(ORDERS_PROBE)
    (commands / "start_pipeline.py").write_text(START_PIPELINE)
    with (folder / "project" / "settings.py").open("a") as settings:
        settings.write('\nINSTALLED_APPS += ["orders"]\n')
    return folder


def site_env(values: dict[str, str]) -> dict[str, str]:
    """The environment of the site's processes: nothing of this checkout or of this venv, plus ``values``."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RELAYBUS_", "DJANGO_")) and k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**inherited, **values}


@contextlib.contextmanager
def worker_process(venv: CleanVenv, site: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """``relaybus worker`` (all agents' queues) from the clean venv, in the site's folder; stopped on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen([str(venv.bin("relaybus")), "worker", "-c", "2", "-n", f"{log.stem}@%h"],
                                cwd=site, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            yield proc
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue


def assert_inside(path: str | None, folder: Path, what: str) -> None:
    assert path is not None and folder.resolve() in Path(path).resolve().parents, f"{what}: {path} not in {folder}"


def assert_site_names(process: dict[str, Any], venv: CleanVenv, site: Path, role: str) -> None:
    assert_inside(process["relaybus"], venv.site_packages, f"{role}: relaybus")
    assert Path(process["project"]).resolve() == (site / "project" / "__init__.py").resolve(), process
    assert Path(process["tasks"]).resolve() == (site / "tasks.py").resolve(), process
    assert process["site_tasks"] is True
    for name, file in process["generic_modules"].items():
        assert name.split(".")[0] in {"project", "tasks"}, f"{role} loaded {name} from {file}"
        assert_inside(file, site, f"{role}: {name}")


def test_relaybus_from_the_wheel_runs_the_research_pipeline_beside_a_django_site_named_project(
    clean_venv: CleanVenv, tmp_path: Path
) -> None:
    broker_url, redis_url = require_rabbitmq(), require_redis()
    settings: Settings = make_settings(tmp_path, broker_url, redis_url, extra_modules=(), extra_agents=(),
                                       embedded_dir=str(tmp_path / "embedded"))
    probes = tmp_path / "probes"
    probes.mkdir()
    site_settings = settings.model_copy(update={"extra_modules": ("orders.probe",)})
    env = site_env({**site_settings.to_env(), "ORDERS_PROBE_DIR": str(probes)})
    site = make_site(clean_venv, tmp_path / "site")

    check = run([clean_venv.python, "manage.py", "check"], cwd=site, env=env)
    assert "System check identified no issues" in check.stdout + check.stderr

    app = create_app(settings)  # this process's view of the namespace: its queues, for readiness and cleanup
    topology = topology_of(app)
    queues = [topology.queue_name(agent) for agent in topology.agents]
    log = tmp_path / f"w{settings.namespace}.log"
    try:
        with worker_process(clean_venv, site, env, log) as worker:
            def consuming() -> bool:
                if worker.poll() is not None:
                    raise AssertionError(f"the worker exited early:\n{log.read_text()[-4000:]}")
                return all(consumer_count(app, q) > 0 for q in queues)

            wait_for(consuming, 60, 0.2, f"the worker to consume {queues}")
            started = subprocess.run(
                [str(clean_venv.python), "manage.py", "start_pipeline", "How do durable queues survive a restart?",
                 "--timeout", "60"], cwd=site, env=env, capture_output=True, text=True, timeout=90)
            assert started.returncode == 0, f"{started.stdout}\n{started.stderr}\n{log.read_text()[-4000:]}"
    finally:
        delete_namespace(app)
        app.close()

    report = json.loads(started.stdout.strip().splitlines()[-1])
    assert report["outcome"]["status"] == "completed", report["outcome"]
    assert report["outcome"]["pipeline"] == "research"
    assert_site_names(report["process"], clean_venv, site, "the management command")

    recorded = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    in_worker = [r for r in recorded if "worker" in r["argv"]]
    assert in_worker, f"the worker never loaded orders.probe: {recorded}"
    for process in in_worker:
        assert Path(process["executable"]).parent == clean_venv.python.parent
        assert_site_names(process, clean_venv, site, "the worker")

    # The event log was created by the wheel's migrations; the worker recorded the run in it.
    store = open_store(settings.eventstore_url)
    try:
        recorded_types = {e.type for e in store.by_correlation(report["outcome"]["pipeline_id"])}
    finally:
        store.close()
    assert {types.PIPELINE_STARTED, types.TASK_SUCCEEDED, types.PIPELINE_COMPLETED} <= recorded_types
