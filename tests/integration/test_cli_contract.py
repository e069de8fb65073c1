"""The CLI's contract, command by command, with every service up and with each one down.

Exit 0 done, 1 a problem found, 2 bad usage, 3 a service could not be reached (or the log is not set up),
with a one-line message on stderr that names the service and its URL, the password masked; never a
traceback. Each command runs as an operator runs it: ``relaybus`` in a subprocess, its output piped.
A service is "down" when nothing listens at its URL (port 1); its URL carries a password that must never
be printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from relaybus.celery import topology_of
from tests.harness import ROOT, delete_namespace, make_app, make_settings

pytestmark = pytest.mark.integration

SECRET = "s3cret-pw"
DOWN = {
    "broker": ("RELAYBUS_BROKER_URL", f"amqp://guest:{SECRET}@127.0.0.1:1//", "broker"),
    "backend": ("RELAYBUS_RESULT_BACKEND", f"redis://:{SECRET}@127.0.0.1:1/0", "result backend"),
    "store": ("RELAYBUS_EVENTSTORE_URL", f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test", "event store"),
}
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
RESEARCH = json.dumps({"request": "how_do_sagas_compensate"}, separators=(",", ":"))
TOPIC = json.dumps({"topic": "sagas"}, separators=(",", ":"))
TOPIC_EXTRA = json.dumps({"topic": "sagas", "extra": 1}, separators=(",", ":"))

#: command -> expected exit code with everything up, then with the broker, the result backend, the event
#: store down. Read by rows: a command that needs a service says 3 when it is down, and only then.
MATRIX: dict[str, tuple[int, int, int, int]] = {
    "--version": (0, 0, 0, 0),
    "pipelines": (0, 0, 0, 0),
    "status": (0, 3, 0, 0),
    "dlq list": (0, 3, 0, 0),
    f"dlq show {NO_SUCH_ID}": (1, 3, 1, 1),
    f"dlq requeue --id {NO_SUCH_ID}": (0, 3, 0, 0),
    "dlq purge --yes": (0, 3, 0, 0),
    f"revoke {NO_SUCH_ID}": (0, 3, 3, 0),  # kept in the result backend, then broadcast over the broker
    f"run research --input {RESEARCH} --no-wait": (0, 3, 3, 0),
    f"run research --input {RESEARCH} --timeout 1": (1, 3, 3, 3),
    f"timeline {NO_SUCH_ID}": (1, 1, 1, 3),
    "events": (0, 0, 0, 3),
    "stats": (0, 0, 0, 3),
    "verify": (0, 0, 0, 3),
    "verify --since-checkpoint no-such-checkpoint.json": (2, 2, 2, 2),
    "checkpoint": (2, 2, 2, 2),  # no signing key configured
    "saga list": (0, 0, 0, 3),
    f"saga show {NO_SUCH_ID}": (1, 1, 1, 3),
    f"saga start content_creation --input {TOPIC}": (0, 3, 0, 3),
    f"saga start content_creation --input {TOPIC_EXTRA}": (2, 2, 2, 2),
    "workflows list": (0, 0, 0, 3),
    "approvals list": (0, 0, 0, 3),
    f"approvals show {NO_SUCH_ID}": (1, 1, 1, 3),
    f"approvals approve {NO_SUCH_ID} --by alice": (1, 1, 1, 3),
    "sweep": (0, 0, 0, 3),
    "projections rebuild": (0, 0, 0, 3),
    f"replay dry-run {NO_SUCH_ID}": (1, 1, 1, 3),
    "db upgrade": (0, 0, 0, 3),
    "dlq": (2, 2, 2, 2),  # a group without its command: its usage
    "no-such-command": (2, 2, 2, 2),
}
STATES = ("up", "broker", "backend", "store")


def split(command: str) -> list[str]:
    """The argv of a matrix row (its JSON inputs have no spaces)."""
    return command.split(" ")


def relaybus(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaybus.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def run_state(commands: list[list[str]], env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """The commands, in order, in one process with ``env`` (tests/cli_runner.py)."""
    done = subprocess.run([sys.executable, "-m", "tests.cli_runner", json.dumps(commands)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


@pytest.fixture
def deployment(tmp_path: Path, broker_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """A namespace with its topology declared and a SQLite event log created by ``relaybus db upgrade``."""
    settings = make_settings(tmp_path, broker_url, redis_url)
    app = make_app(settings)
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), "RELAYBUS_PUBLISH_TIMEOUT_S": "3",
           "RELAYBUS_CLI_STORE_WAIT_S": "2"}
    env.pop("RELAYBUS_DEBUG", None)
    try:
        yield env
    finally:
        delete_namespace(app)
        app.close()


def test_every_command_keeps_the_exit_code_contract_with_each_service_down(deployment, tmp_path):
    first = ["db upgrade", f"run research --input {RESEARCH} --no-wait"]  # up: a log, and a pipeline in it
    order = first + [c for c in MATRIX if c not in first]

    def state(name: str) -> tuple[str, list[dict[str, Any]]]:
        env = dict(deployment)
        if name != "up":
            variable, url, _ = DOWN[name]
            env[variable] = url
        return name, run_state([split(c) for c in order], env, tmp_path)

    with ThreadPoolExecutor(max_workers=len(STATES)) as pool:
        by_state = dict(pool.map(state, STATES))
    results = [(name, command, r) for name in STATES for command, r in zip(order, by_state[name], strict=True)]

    got = {(name, command): r["code"] for name, command, r in results}
    table = "\n".join(
        f"{command[:60]:<60} " + " ".join(f"{name}={got[name, command]}" for name in STATES) for command in MATRIX
    )
    print("\nCLI matrix (command: exit code per service state)\n" + table)
    slow = sorted(((r["seconds"], name, command) for name, command, r in results), reverse=True)[:5]
    print("slowest:", slow)
    expected = {(name, command): codes[STATES.index(name)] for command, codes in MATRIX.items() for name in STATES}
    wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    said = "\n".join(f"{k}: {r['stderr'].strip()[-600:]}" for name, command, r in results
                     if (k := (name, command)) in wrong)
    assert wrong == {}, f"(got, expected) differ:\n{table}\nwhat the wrong cells said:\n{said}"

    for name, command, r in results:
        where = f"{command!r} with {name}"
        assert r["escaped"] is None, f"{where} let an exception escape:\n{r['escaped']}"
        printed = r["stdout"] + r["stderr"]
        assert "Traceback" not in printed, f"{where} printed a traceback:\n{printed}"
        assert SECRET not in printed, f"{where} printed a password"
        assert "…" not in r["stdout"], f"{where} shortened a cell of its table:\n{r['stdout']}"
        if r["code"] == 3:
            message = r["stderr"].strip().splitlines()[-1]
            service = DOWN[name][2] if name != "up" else "event store"
            assert service in message and "127.0.0.1:1" in message, f"{where}: {r['stderr']}"
        if r["code"] == 2:
            assert r["stderr"].strip(), f"{where}: bad usage, and nothing said about it"

    # Not a terminal: tables are never cut, ids are whole. The pipeline started first is listed in full.
    pipeline_id = by_state["up"][1]["stdout"].strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", pipeline_id), pipeline_id
    listed = next(r for name, command, r in results if (name, command) == ("up", "workflows list"))
    assert pipeline_id in listed["stdout"]
    # And as an operator runs it, in its own process: the same contract.
    down = {**deployment, DOWN["store"][0]: DOWN["store"][1]}
    alone = relaybus(["stats"], down, tmp_path)
    assert alone.returncode == 3 and "Traceback" not in alone.stderr and SECRET not in alone.stderr, alone.stderr


def test_a_missing_sqlite_log_is_named_not_created(deployment, tmp_path):
    elsewhere = tmp_path / "another-folder"
    elsewhere.mkdir()
    env = {**deployment, "RELAYBUS_EVENTSTORE_URL": "sqlite:///.relaybus/events.sqlite"}
    for command in ("stats", "events", f"timeline {NO_SUCH_ID}", "verify", "workflows list"):
        r = relaybus(command.split(), env, elsewhere)
        assert r.returncode == 3, (command, r.stdout, r.stderr)
        assert f"no event log at {elsewhere / '.relaybus' / 'events.sqlite'}" in r.stderr, r.stderr
    assert not (elsewhere / ".relaybus").exists(), "a read command created an empty event log"


def test_every_command_and_option_has_help_and_h_works():
    import click

    from relaybus.cli import main

    missing = []

    def walk(command: click.Command, path: str) -> None:
        if not command.help:
            missing.append(path)
        missing.extend(f"{path} {p.opts[0]}" for p in command.params
                       if isinstance(p, click.Option) and not p.help and not p.hidden)  # hidden: not in --help
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(main, "relaybus")
    assert missing == []
    r = subprocess.run([sys.executable, "-m", "relaybus.cli", "dlq", "list", "-h"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--agents" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "relaybus.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and re.search(r"relaybus, version \d", r.stdout), r.stdout

