"""Private, throw-away RabbitMQ, Redis and PostgreSQL instances that the chaos tests may stop and restart.

The machine's own services (RabbitMQ 5672, Redis 6379, PostgreSQL 5432) are shared with other people
and are never touched here. Each private instance lives in a temporary directory, listens on a free
port on 127.0.0.1, and is stopped (and its directory removed) when the test session ends.

* **RabbitMQ**: a node of its own (``rb<hex>@localhost``) started with the server script itself, with
  its own mnesia, log and pid paths, an empty config file (the machine's ``rabbitmq.conf`` binds 5672),
  an empty env file and no plugins. ``HOME`` points into the temporary directory, so the node and
  ``rabbitmqctl`` share an Erlang cookie of their own, not the machine node's.
  :meth:`PrivateRabbitMQ.restart` stops the whole node and boots it again on the same mnesia
  directory: durable queues and persistent messages come back, nothing else does.
* **Redis**: ``redis-server`` without persistence; a restart loses every key (that is the point).
* **PostgreSQL**: ``initdb`` + ``pg_ctl`` run as the ``postgres`` OS user (PostgreSQL refuses to run
  as root) on a temporary directory owned by it, trust authentication, fsync off (a test cluster).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from glob import glob
from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class ServiceUnavailable(RuntimeError):
    """Raised when a private service cannot be started on this machine (missing binary, no permission)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise ServiceUnavailable(f"timed out after {timeout}s waiting for {what}")


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class PrivateService:
    """What the three private services share: a restart is a stop, an outage, and a start on the same data."""

    restarts = 0

    def start(self) -> PrivateService:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the service, stay down ``down_s`` seconds, start it again on the same data."""
        self.stop()
        if down_s:
            time.sleep(down_s)  # the outage itself: nothing to wait for, it is the fault being injected
        self.start()
        self.restarts += 1


# -- RabbitMQ --------------------------------------------------------------------------------------


class PrivateRabbitMQ(PrivateService):
    def __init__(self) -> None:
        if not (os.access(RABBITMQ_SERVER, os.X_OK) and os.access(RABBITMQCTL, os.X_OK)):
            raise ServiceUnavailable(f"{RABBITMQ_SERVER} is not installed")
        self.base = Path(tempfile.mkdtemp(prefix="relaybus-chaos-rabbitmq-"))
        self.node = f"rb{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        for sub in ("mnesia", "log", "home"):
            (self.base / sub).mkdir()
        for empty in ("rabbitmq.conf", "enabled_plugins", "rabbitmq-env.conf"):
            (self.base / empty).write_text("")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        b = self.base
        return {
            **os.environ,
            "HOME": str(b / "home"),  # the node's and rabbitmqctl's Erlang cookie, of their own
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_PID_FILE": str(b / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RABBITMQCTL, "-n", self.node, *args], env=self._env(), capture_output=True, text=True, timeout=timeout
        )

    def alarms(self) -> str:
        """The node's resource alarms as rabbitmqctl prints them (``memory`` in it: publishers are blocked)."""
        return self.ctl("eval", "rabbit_alarm:get_alarms().").stdout

    def start(self, timeout: float = 90.0) -> PrivateRabbitMQ:
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [RABBITMQ_SERVER],
            env=self._env(),
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def booted() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                out = (self.base / "server.out").read_text(errors="replace")[-3000:]
                raise ServiceUnavailable(f"private RabbitMQ exited during boot:\n{out}")
            return port_open(self.port)

        wait_until(booted, timeout, f"private RabbitMQ {self.node} on port {self.port}", 0.25)
        result = self.ctl("await_startup", timeout=timeout)
        if result.returncode != 0:
            raise ServiceUnavailable(f"rabbitmqctl await_startup failed: {result.stdout}{result.stderr}")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (gracefully, as an operator would) and wait for its process to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(self.proc)
        wait_until(lambda: not port_open(self.port), timeout, "the private RabbitMQ port to close")

    def close(self) -> None:
        try:
            self.stop(timeout=30)
        finally:
            _stop_group(self.proc)
            shutil.rmtree(self.base, ignore_errors=True)


# -- Redis -----------------------------------------------------------------------------------------


class PrivateRedis(PrivateService):
    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ServiceUnavailable("redis-server is not installed")
        self.base = Path(tempfile.mkdtemp(prefix="relaybus-chaos-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> PrivateRedis:
        assert self.binary is not None
        log = open(self.base / "redis.out", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.base),
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: port_open(self.port), timeout, f"private Redis on port {self.port}")
        return self

    def stop(self) -> None:
        _stop_group(self.proc)
        wait_until(lambda: not port_open(self.port), 30, "the private Redis port to close")

    def close(self) -> None:
        try:
            _stop_group(self.proc)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise ServiceUnavailable(f"PostgreSQL's {name} is not installed")
    return found[-1]


class PrivatePostgres(PrivateService):
    """A private cluster. As root it runs as the ``postgres`` OS user (``runuser``), which owns its directory."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.base = Path(tempfile.mkdtemp(prefix="relaybus-chaos-postgres-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceUnavailable("running as root and there is no postgres OS user") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ServiceUnavailable("running as root without runuser")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.prefix = [runuser, "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120.0) -> None:
        result = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ServiceUnavailable(f"{' '.join(argv[:2])} failed: {result.stdout}{result.stderr}")

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.base / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        return self

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every session is cut, as when the database goes away."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
