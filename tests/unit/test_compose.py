"""docker-compose.yml, .env.example and the Dockerfile, checked by parsing: no Docker engine runs here.

Each rule is a function returning the problems it finds. The tests assert the real files have none,
and feed the same functions deliberately broken copies to show that every rule can fail. The file is
also validated against the compose specification's JSON schema (``compose_spec/``, vendored: see its
README), as ``docker compose config`` would.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from relaybus.celery import BUILTIN_AGENTS
from relaybus.cli.ops import worker as worker_command
from relaybus.settings import Settings
from relaybus.topology import Topology
from relaybus.workers import UnknownAgent, worker_argv

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
GITIGNORE = ROOT / ".gitignore"
COMPOSE_SCHEMA = Path(__file__).parent / "compose_spec" / "compose-spec.json"

BACKING_SERVICES = ("rabbitmq", "redis", "postgres")
DEFAULT_NAMESPACE = Settings.model_fields["namespace"].default

Doc = dict[str, Any]

# ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``, ``${NAME?error}``, ``${NAME:+alt}``.
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|API_KEY|AUTH", re.IGNORECASE)
# A secret is acceptable only as a reference without a default: compose's ``${VAR}`` / ``${VAR:?...}``
# (``{{VAR}}`` after :func:`secret_view`), or the container's own variable, ``$$VAR``, read at run time.
# ``$$(cat /run/secrets/<name>)``: the container's shell reads a compose secret at start.
_PURE_REFERENCE = re.compile(
    r'"?(\{\{[A-Za-z_][A-Za-z0-9_]*\}\}|\$\$[A-Za-z_][A-Za-z0-9_]*|\$\$\(cat /run/secrets/[a-z0-9_]+\))"?'
)
_SECRET_PATH = re.compile(r"/run/secrets/(?P<name>[a-z0-9_]+)")
# An exact release: ``name:1.2.3`` (a suffix allowed: ``-management``, ``-slim-bookworm``), a digest optional;
# PostgreSQL numbers its releases ``major.minor`` since 10 (``postgres:16.10``).
_PINNED_IMAGE = re.compile(
    r"^(?:[a-z0-9][a-z0-9._/-]*:\d+\.\d+\.\d+|postgres:\d{2,}\.\d+)(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$"
)
_URL_WITH_PASSWORD = re.compile(
    r"[a-z][a-z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<password>\$\$\(cat [^)]*\)|[^@\s]*)@", re.IGNORECASE
)
_SECRET_FLAGS = re.compile(r'(?:--requirepass|--basic-auth|--basic_auth|--password)[=\s]+(?P<value>"[^"]*"|\S+)')


# -- reading the files --------------------------------------------------------------------------------


def load(text: str) -> Doc:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def compose() -> Doc:
    return load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """What compose would use with an empty environment: defaults filled in, required values as ``<NAME>``."""

    def substitute(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if op in {":-", "-"}:
            return match["arg"] or ""
        if op in {":+", "+"}:
            return ""
        return f"<{match['name']}>"

    return _REFERENCE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def secret_view(value: str) -> str:
    """Compose references as ``{{NAME}}`` (no default) or ``{{NAME=default}}``, the container's ``$$VAR`` kept.

    Written without colons, so a reference inside ``scheme://user:password@`` cannot be mistaken for
    the separator.
    """

    def marker(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if op in {":-", "-", ":+", "+"}:
            return "{{" + match["name"] + "=" + (match["arg"] or "").replace(":", "_").replace("@", "_") + "}}"
        return "{{" + match["name"] + "}}"

    return _REFERENCE.sub(marker, value.replace("$$", "\0")).replace("\0", "$$")


def services(doc: Doc) -> dict[str, Doc]:
    found = doc.get("services") or {}
    assert isinstance(found, dict)
    return found


def environment(service: Doc) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {key: value for key, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def command(service: Doc) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def strings(node: Any) -> Iterator[str]:
    """Every string in a parsed document: keys, values, list items."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def depends_on(service: Doc) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def relaybus_services(doc: Doc) -> dict[str, Doc]:
    """The services that run relaybus itself: those built from this repository's Dockerfile."""
    return {name: s for name, s in services(doc).items() if "build" in s}


def worker_services(doc: Doc) -> dict[str, Doc]:
    return {
        name: s
        for name, s in services(doc).items()
        if [interpolate(a) for a in command(s)][:2] == ["relaybus", "worker"]
    }


def migration_services(doc: Doc) -> dict[str, Doc]:
    return {
        name: s
        for name, s in services(doc).items()
        if [interpolate(a) for a in command(s)][:3] == ["relaybus", "db", "upgrade"]
    }


def service_env(service: Doc, name: str) -> str | None:
    value = environment(service).get(name)
    return None if value is None else interpolate(value)


def topology_of_service(service: Doc) -> Topology:
    namespace = service_env(service, "RELAYBUS_NAMESPACE") or DEFAULT_NAMESPACE
    urgent = (service_env(service, "RELAYBUS_URGENT_QUEUES") or "false").lower() == "true"
    return Topology(namespace, BUILTIN_AGENTS, urgent)


def consumed_queues(service: Doc) -> set[str]:
    """The queues a ``relaybus worker ...`` service consumes: its command parsed by the real CLI, and
    the ``-Q`` list the real CLI would hand to Celery."""
    argv = [interpolate(a) for a in command(service)]
    params = worker_command.make_context("worker", argv[2:]).params
    agents = [a.strip() for a in params["agents"].split(",") if a.strip()] if params["agents"] else None
    try:
        celery_argv = worker_argv(topology_of_service(service), agents, urgent_only=params["urgent"])
    except UnknownAgent:  # the CLI would refuse to start: the service consumes nothing
        return set()
    return set(celery_argv[celery_argv.index("-Q") + 1].split(","))


def urgent_only(service: Doc) -> bool:
    argv = [interpolate(a) for a in command(service)]
    return bool(worker_command.make_context("worker", argv[2:]).params["urgent"])


# -- the rules ----------------------------------------------------------------------------------------


def queue_coverage_problems(doc: Doc) -> list[str]:
    workers = worker_services(doc)
    if not workers:
        return ["no service runs `relaybus worker`"]
    # Urgent queues included whatever the services' setting says: the stack is meant to have them.
    namespace = topology_of_service(next(iter(workers.values()))).namespace
    expected = {q.name for q in Topology(namespace, BUILTIN_AGENTS, urgent_queues=True).queues_for(BUILTIN_AGENTS)}
    consumed = set().union(*(consumed_queues(s) for s in workers.values()))
    return [f"no service consumes {queue}" for queue in sorted(expected - consumed)]


def urgent_worker_problems(doc: Doc) -> list[str]:
    dedicated = {name: s for name, s in worker_services(doc).items() if urgent_only(s)}
    if not dedicated:
        return ["no dedicated urgent worker (`relaybus worker --urgent`)"]
    problems = []
    for name, service in dedicated.items():
        topology = topology_of_service(service)
        urgent = {topology.queue_name(agent, urgent=True) for agent in BUILTIN_AGENTS}
        queues = consumed_queues(service)
        problems += [f"{name} does not consume {q}" for q in sorted(urgent - queues)]
        problems += [f"{name} also consumes the normal queue {q}" for q in sorted(queues - urgent)]
    return problems


def per_agent_worker_problems(doc: Doc) -> list[str]:
    problems = []
    all_services = services(doc)
    for agent in BUILTIN_AGENTS:
        name = f"worker-{agent}"
        service = all_services.get(name)
        if service is None:
            problems.append(f"no service {name}")
            continue
        argv = [interpolate(a) for a in command(service)]
        if argv[:2] != ["relaybus", "worker"]:
            problems.append(f"{name} does not run `relaybus worker`: {argv}")
            continue
        topology = topology_of_service(service)
        own = {
            topology.queue_name(agent),
            *([topology.queue_name(agent, urgent=True)] if topology.urgent_queues else []),
        }
        if consumed_queues(service) != own:
            problems.append(f"{name} consumes {sorted(consumed_queues(service))}, expected {sorted(own)}")
        # `--scale` starts several containers of one service: a fixed name or host port would clash.
        if "container_name" in service:
            problems.append(f"{name} has a container_name, so it cannot be scaled")
        if service.get("ports"):
            problems.append(f"{name} publishes host ports, so it cannot be scaled")
    return problems


def urgent_setting_problems(doc: Doc) -> list[str]:
    return [
        f"{name} does not set RELAYBUS_URGENT_QUEUES=true"
        for name, service in relaybus_services(doc).items()
        if (service_env(service, "RELAYBUS_URGENT_QUEUES") or "").lower() != "true"
    ]


def namespace_problems(doc: Doc) -> list[str]:
    namespaces = {
        name: service_env(s, "RELAYBUS_NAMESPACE") or DEFAULT_NAMESPACE for name, s in relaybus_services(doc).items()
    }
    return [] if len(set(namespaces.values())) <= 1 else [f"services disagree on the namespace: {namespaces}"]


def password_problems(doc: Doc) -> list[str]:
    problems = []
    for name, service in services(doc).items():
        for key, value in environment(service).items():
            if value is None:  # passed through from the shell or .env when set there
                continue
            if key.endswith("_FILE"):
                if _SECRET_NAME.search(key) and not _SECRET_PATH.fullmatch(value):
                    problems.append(f"{name}: {key} is not a compose secret (/run/secrets/…): {value!r}")
            elif _SECRET_NAME.search(key):
                problems.append(f"{name}: {key} puts a secret in the environment (docker inspect shows it)")
            # Not even a reference: the resolved password would sit in the container's environment.
            if _URL_WITH_PASSWORD.search(secret_view(value)):
                problems.append(f"{name}: {key} is a URL with a password in the environment: {value!r}")
    # Command lines as a whole too: a list form puts a flag and its value in separate items.
    command_lines = [" ".join(command(s)) for s in services(doc).values()]
    for text in [*strings(doc), *command_lines]:
        view = secret_view(text)
        for match in _URL_WITH_PASSWORD.finditer(view):
            if not _PURE_REFERENCE.fullmatch(match["password"]):
                problems.append(f"literal password in URL {text!r}")
        for match in _SECRET_FLAGS.finditer(view):
            if not _PURE_REFERENCE.fullmatch(match["value"]):
                problems.append(f"literal secret on a command line: {text!r}")
        for match in _REFERENCE.finditer(text):
            if _SECRET_NAME.search(match["name"]) and (match["op"] or "") in {":-", "-"}:
                problems.append(f"{match['name']} has a default value: {match[0]!r}")
    return problems


def guest_problems(*texts: str) -> list[str]:
    return [
        f"'guest' appears in: {line.strip()!r}"
        for text in texts
        for line in text.splitlines()
        if "guest" in line.lower()
    ]


def env_example_problems(doc: Doc, env_example: str) -> list[str]:
    lines = env_example.splitlines()
    documented = {m[1] for m in (re.fullmatch(r"\s*#?\s*([A-Z_][A-Z0-9_]*)=.*", line) for line in lines) if m}
    active = {m[1]: m[2].strip() for m in (re.fullmatch(r"\s*([A-Z_][A-Z0-9_]*)=(.*)", line) for line in lines) if m}
    problems = [
        f".env.example sets the secret {key} (leave it empty)"
        for key, value in active.items()
        if _SECRET_NAME.search(key) and value
    ]
    required = set()
    for match in _REFERENCE.finditer("\n".join(strings(doc))):
        if match["name"] not in documented:
            problems.append(f"{match['name']} is read by docker-compose.yml but not documented in .env.example")
        if (match["op"] or "") in {":?", "?"}:
            required.add(match["name"])
    problems += [f"{name} is required but commented out in .env.example" for name in sorted(required - set(active))]
    return problems


def flower_problems(doc: Doc) -> list[str]:
    flowers = {name: s for name, s in services(doc).items() if "flower" in shlex.split(" ".join(command(s)))}
    if not flowers:
        return ["no service runs Flower"]
    problems = []
    for name, service in flowers.items():
        env = environment(service)
        argv = " ".join(command(service))
        auth = re.search(r'FLOWER_BASIC_AUTH="(?P<value>[^"]*)"', argv)
        if not (auth and _SECRET_PATH.search(auth["value"])) and "--basic-auth=$$(cat /run/secrets/" not in argv:
            problems.append(f"{name}: no basic auth read from a secret file")
        if (service_env(service, "FLOWER_UNAUTHENTICATED_API") or "").lower() in {"1", "true", "yes"} or (
            "--unauthenticated" in argv
        ):
            problems.append(f"{name}: the API is open without authentication")
        api = re.search(r'FLOWER_BROKER_API="(?P<value>[^"]*)"', argv)
        url = re.sub(r"\$\$\(cat [^)]*\)", "secret", api["value"]) if api else env.get("FLOWER_BROKER_API")
        parts = urlsplit(url or "")
        if parts.hostname != "rabbitmq" or parts.port != 15672 or parts.path != "/api/":
            problems.append(f"{name}: FLOWER_BROKER_API is not the management API (http://…@rabbitmq:15672/api/)")
    rabbitmq = services(doc).get("rabbitmq", {})
    if "management" not in str(rabbitmq.get("image", "")):
        problems.append(f"the RabbitMQ image has no management plugin: {rabbitmq.get('image')!r}")
    return problems


def healthcheck_problems(doc: Doc) -> list[str]:
    problems = []
    for name in BACKING_SERVICES:
        check = (services(doc).get(name) or {}).get("healthcheck") or {}
        if check.get("disable") or not check.get("test"):
            problems.append(f"{name} has no healthcheck")
    # A worker is healthy when its own Celery node answers over the broker, not merely when a process lives.
    for name, service in worker_services(doc).items():
        check = service.get("healthcheck") or {}
        test = " ".join(check.get("test") or []) if isinstance(check.get("test"), list) else str(check.get("test"))
        if check.get("disable") or "inspect ping" not in test or "celery@$$HOSTNAME" not in test:
            problems.append(f"{name} has no healthcheck that pings its own node: {test!r}")
    return problems


def hosts_used(service: Doc) -> set[str]:
    hosts = set()
    for value in environment(service).values():
        for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", interpolate(value or ""), re.IGNORECASE):
            if urlsplit(url).hostname:
                hosts.add(urlsplit(url).hostname)
    return hosts


def dependency_problems(doc: Doc) -> list[str]:
    problems = []
    for name, service in services(doc).items():
        deps = depends_on(service)
        for host in sorted(hosts_used(service) & set(BACKING_SERVICES)):
            if deps.get(host) != "service_healthy":
                problems.append(f"{name} connects to {host} but does not wait for it to be healthy ({deps.get(host)})")
    return problems


def migration_problems(doc: Doc) -> list[str]:
    migrations = migration_services(doc)
    if not migrations:
        return ["no service runs `relaybus db upgrade`"]
    problems = []
    for name, service in migrations.items():
        if str(service.get("restart", "no")) != "no":
            problems.append(f"{name} restarts; a one-shot job must not ({service.get('restart')!r})")
    for name, service in worker_services(doc).items():
        deps = depends_on(service)
        if not any(deps.get(m) == "service_completed_successfully" for m in migrations):
            problems.append(f"{name} does not wait for the migration to complete successfully ({deps})")
    return problems


def redis_problems(doc: Doc) -> list[str]:
    argv = " ".join(interpolate(a) for a in command(services(doc).get("redis") or {}))
    problems = []
    if not re.search(r"--maxmemory-policy\s+noeviction\b", argv):
        problems.append(f"redis does not run with --maxmemory-policy noeviction: {argv!r}")
    if not re.search(r"--maxmemory\s+\d+[kmg]?b?\b", argv, re.IGNORECASE):
        problems.append(f"redis has no --maxmemory, so its eviction policy never applies: {argv!r}")
    return problems


def anchor_problems(text: str) -> list[str]:
    """Every worker service merges the same anchored mapping (``<<: *worker``)."""
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    top = {key.value: value for key, value in root.value}
    merged: dict[str, yaml.Node | None] = {}
    for key, node in top["services"].value:
        fields = {k.value: v for k, v in node.value}
        cmd = fields.get("command")
        if isinstance(cmd, yaml.SequenceNode) and [item.value for item in cmd.value][:2] == ["relaybus", "worker"]:
            merged[key.value] = fields.get("<<")
    problems = [
        f"{name} does not merge a shared definition (<<: *anchor)" for name, node in merged.items() if node is None
    ]
    if len({id(node) for node in merged.values() if node is not None}) > 1:
        problems.append("worker services merge different definitions")
    return problems


def image_problems(doc: Doc, dockerfile: str) -> list[str]:
    """Every image an exact release (or a digest): a floating tag changes under a running deployment."""
    images = {name: str(s["image"]) for name, s in services(doc).items() if "image" in s and "build" not in s}
    froms = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM")]
    images |= {f"the Dockerfile's FROM {image}": image for image in froms}
    return [f"{where}: {image!r} is not pinned to an exact release" for where, image in images.items()
            if not _PINNED_IMAGE.fullmatch(interpolate(image))]


def rabbitmq_problems(doc: Doc) -> list[str]:
    """A supported release (3.13 or 4.x: classic queues keep x-max-priority) with its Prometheus port published."""
    rabbitmq = services(doc).get("rabbitmq") or {}
    version = re.search(r":(\d+)\.(\d+)\.", str(rabbitmq.get("image", "")))
    problems = []
    if not version or (int(version[1]), int(version[2])) < (3, 13):
        problems.append(f"RabbitMQ {rabbitmq.get('image')!r} is past its end of life (3.13 or 4.x)")
    if not any(str(p).endswith(":15692") for p in rabbitmq.get("ports") or []):
        problems.append("RabbitMQ's Prometheus endpoint (15692) is not published")
    return problems


def beat_problems(doc: Doc) -> list[str]:
    """Saga step deadlines and pipeline deadlines fire only if something sends the sweeps: beat."""
    beats = {
        name: s for name, s in services(doc).items()
        if [interpolate(a) for a in command(s)][:4] == ["celery", "-A", "relaybus", "beat"]
    }
    if len(beats) != 1:
        return [f"{len(beats)} services run `celery -A relaybus beat`, expected exactly one"]
    name, beat = next(iter(beats.items()))
    problems = []
    if depends_on(beat).get("rabbitmq") != "service_healthy":
        problems.append(f"{name} does not wait for rabbitmq to be healthy")
    if topology_of_service(beat).namespace != topology_of_service(services(doc)["worker-system"]).namespace:
        problems.append(f"{name} sends the sweeps to another namespace than worker-system's")
    return problems


def url_user(service: Doc, key: str) -> str | None:
    value = service_env(service, key)
    return urlsplit(value).username if value else None


def role_problems(doc: Doc) -> list[str]:
    """The migration runs as the tables' owner and creates the app role; everything else connects as that role."""
    migrations = migration_services(doc)
    owner = service_env(services(doc)["postgres"], "POSTGRES_USER")
    problems = []
    app_roles = set()
    for name, service in migrations.items():
        argv = [interpolate(a) for a in command(service)]
        if "--app-role" not in argv:
            problems.append(f"{name} does not create the app role (relaybus db upgrade --app-role …)")
        else:
            app_roles.add(argv[argv.index("--app-role") + 1])
        if url_user(service, "RELAYBUS_EVENTSTORE_URL") != owner:
            problems.append(f"{name} does not migrate as the owner {owner!r}")
    for name, service in services(doc).items():
        user = url_user(service, "RELAYBUS_EVENTSTORE_URL")
        if name in migrations or user is None:
            continue
        if user == owner or user not in app_roles:
            problems.append(f"{name} connects to the event log as {user!r}, not as the app role {sorted(app_roles)}")
    return problems


def secret_problems(doc: Doc, gitignore: str) -> list[str]:
    """Each secret a service reads is granted to it and declared as a file under ./secrets, which git ignores."""
    declared = doc.get("secrets") or {}
    problems = []
    for name, service in services(doc).items():
        granted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}
        used = {m["name"] for text in strings(service) for m in _SECRET_PATH.finditer(text)}
        problems += [f"{name} reads the secret {s} it is not given" for s in sorted(used - granted)]
        problems += [f"{name} is given the undeclared secret {s}" for s in sorted(granted - set(declared))]
    for secret, spec in declared.items():
        if not str((spec or {}).get("file", "")).startswith("./secrets/"):
            problems.append(f"the secret {secret} is not a file under ./secrets/")
    if "secrets/*" not in gitignore.splitlines():
        problems.append(".gitignore does not keep secrets/* out of git")
    if "secrets/" not in (ROOT / ".dockerignore").read_text().splitlines():
        problems.append(".dockerignore does not keep secrets/ out of the build context")
    return problems


def interpolated(node: Any) -> Any:
    """The document as compose sees it once variables are filled in with their defaults."""
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, dict):
        return {key: interpolated(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(item) for item in node]
    return node


def schema_problems(doc: Doc) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(interpolated(doc))
    ]


def dockerfile_problems(dockerfile: str) -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = sorted(set(pyproject["tool"]["setuptools"]["package-dir"].values()))
    copied = {
        part.rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY") for part in line.split()[1:-1]
    }
    problems = [f"the Dockerfile does not copy {p}" for p in ["pyproject.toml", *packages] if p not in copied]
    if not re.search(r"^RUN\b.*\bpip install\b\s+'?\.(\[[a-z,]+\])?'?(\s|$)", dockerfile, re.MULTILINE):
        problems.append("the Dockerfile does not `pip install` the package")
    return problems


# -- the real files --------------------------------------------------------------------------------------


def test_every_builtin_agent_queue_is_consumed_by_some_worker_service(compose):
    assert queue_coverage_problems(compose) == []


def test_a_dedicated_worker_consumes_every_urgent_queue_and_nothing_else(compose):
    assert urgent_worker_problems(compose) == []


def test_each_builtin_agent_has_its_own_worker_service_that_can_be_scaled(compose):
    assert per_agent_worker_problems(compose) == []


def test_worker_services_share_one_definition_through_a_yaml_anchor():
    assert anchor_problems(COMPOSE.read_text()) == []


def test_urgent_queues_are_on_for_every_relaybus_service(compose):
    assert urgent_setting_problems(compose) == []


def test_every_relaybus_service_uses_the_same_namespace(compose):
    assert namespace_problems(compose) == []


def test_no_password_is_written_into_the_compose_file(compose):
    assert password_problems(compose) == []


def test_the_guest_account_appears_nowhere():
    assert guest_problems(COMPOSE.read_text(), ENV_EXAMPLE.read_text(), DOCKERFILE.read_text()) == []


def test_env_example_documents_every_variable_and_leaves_every_secret_empty(compose):
    assert env_example_problems(compose, ENV_EXAMPLE.read_text()) == []


def test_flower_needs_basic_auth_and_reads_the_management_api(compose):
    assert flower_problems(compose) == []


def test_rabbitmq_redis_and_postgres_have_healthchecks(compose):
    assert healthcheck_problems(compose) == []


def test_services_wait_for_the_backing_services_they_connect_to_to_be_healthy(compose):
    assert dependency_problems(compose) == []


def test_workers_wait_for_the_one_shot_migration_to_complete(compose):
    assert migration_problems(compose) == []


def test_redis_refuses_writes_rather_than_evicting_keys(compose):
    assert redis_problems(compose) == []


def test_the_dockerfile_copies_and_installs_the_package():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_the_compose_file_is_valid_by_the_compose_specification_schema(compose):
    assert schema_problems(compose) == []


def test_every_image_is_pinned_to_an_exact_release(compose):
    assert image_problems(compose, DOCKERFILE.read_text()) == []


def test_rabbitmq_is_a_supported_release_with_its_prometheus_endpoint_published(compose):
    assert rabbitmq_problems(compose) == []


def test_one_beat_sends_the_sweeps_so_deadlines_fire(compose):
    assert beat_problems(compose) == []


def test_the_migration_runs_as_the_owner_and_everything_else_as_the_app_role(compose):
    assert role_problems(compose) == []


def test_every_secret_comes_from_a_compose_secret_file_that_git_ignores(compose):
    assert secret_problems(compose, GITIGNORE.read_text()) == []


# -- each rule catches what it is for ---------------------------------------------------------------------


def _drop(path: str) -> Callable[[Doc], None]:
    *parents, last = path.split("/")

    def mutate(doc: Doc) -> None:
        node = doc
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    *parents, last = path.split("/")

    def mutate(doc: Doc) -> None:
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def image_problems_of_compose(doc: Doc) -> list[str]:
    return image_problems(doc, DOCKERFILE.read_text())


def secret_problems_of_compose(doc: Doc) -> list[str]:
    return secret_problems(doc, GITIGNORE.read_text())


BROKEN: dict[str, tuple[Callable[[Doc], None], Callable[[Doc], list[str]]]] = {
    "researcher has no worker": (_drop("services/worker-researcher"), queue_coverage_problems),
    "researcher worker serves another agent": (
        _set("services/worker-researcher/command", ["relaybus", "worker", "--agents", "writer"]),
        per_agent_worker_problems,
    ),
    "researcher worker has a fixed container name": (
        _set("services/worker-researcher/container_name", "researcher"),
        per_agent_worker_problems,
    ),
    "no dedicated urgent worker": (
        _set("services/worker-urgent/command", ["relaybus", "worker"]),
        urgent_worker_problems,
    ),
    "urgent worker misses an agent": (
        _set("services/worker-urgent/command", ["relaybus", "worker", "--urgent", "--agents", "intake"]),
        urgent_worker_problems,
    ),
    "urgent queues off for flower": (
        _set("services/flower/environment", {"RELAYBUS_URGENT_QUEUES": "false"}),
        urgent_setting_problems,
    ),
    "urgent queues off for every worker": (
        lambda doc: [s["environment"].update(RELAYBUS_URGENT_QUEUES="false") for s in worker_services(doc).values()],
        queue_coverage_problems,
    ),
    "a worker in another namespace": (
        _set("services/worker-intake/environment", {"RELAYBUS_NAMESPACE": "other", "RELAYBUS_URGENT_QUEUES": "true"}),
        namespace_problems,
    ),
    "a literal RabbitMQ password": (
        _set("services/rabbitmq/environment/RABBITMQ_DEFAULT_PASS", "s3cret"),
        password_problems,
    ),
    "a password in an environment URL, even as a reference": (
        _set(
            "services/worker-intake/environment/RELAYBUS_BROKER_URL",
            "amqp://relaybus:${RABBITMQ_PASSWORD:?set it}@rabbitmq:5672/relaybus",
        ),
        password_problems,
    ),
    "a password file outside the compose secrets": (
        _set("services/migrate/environment/RELAYBUS_DB_APP_PASSWORD_FILE", "/app/app_password"),
        password_problems,
    ),
    "a worker without healthcheck": (_drop("services/worker-researcher/healthcheck"), healthcheck_problems),
    "a worker healthcheck that only checks a process": (
        _set("services/worker-writer/healthcheck", {"test": ["CMD", "pgrep", "celery"]}),
        healthcheck_problems,
    ),
    "a floating redis tag": (_set("services/redis/image", "redis:7"), image_problems_of_compose),
    "postgres latest": (_set("services/postgres/image", "postgres:latest"), image_problems_of_compose),
    "an image without tag": (_set("services/rabbitmq/image", "rabbitmq"), image_problems_of_compose),
    "an end-of-life RabbitMQ": (_set("services/rabbitmq/image", "rabbitmq:3.10.25-management"), rabbitmq_problems),
    "no Prometheus port": (
        _set("services/rabbitmq/ports", ["127.0.0.1:5672:5672", "127.0.0.1:15672:15672"]),
        rabbitmq_problems,
    ),
    "no beat": (_drop("services/beat"), beat_problems),
    "two beats": (lambda doc: doc["services"].update({"beat-2": doc["services"]["beat"]}), beat_problems),
    "workers connect as the owner": (
        lambda doc: [
            s["environment"].update(
                RELAYBUS_EVENTSTORE_URL="postgresql+psycopg://${POSTGRES_USER:-relaybus}@postgres:5432/relaybus"
            )
            for s in worker_services(doc).values()
        ],
        role_problems,
    ),
    "the migration creates no app role": (
        _set("services/migrate/command", ["relaybus", "db", "upgrade"]),
        role_problems,
    ),
    "the migration runs as the app role": (
        _set(
            "services/migrate/environment/RELAYBUS_EVENTSTORE_URL",
            "postgresql+psycopg://relaybus_app@postgres:5432/relaybus",
        ),
        role_problems,
    ),
    "a worker reads a secret it is not given": (
        _set("services/worker-intake/secrets", ["rabbitmq_password"]),
        secret_problems_of_compose,
    ),
    "a secret outside ./secrets": (
        _set("secrets/redis_password", {"file": "/etc/redis_password"}),
        secret_problems_of_compose,
    ),
    "a healthcheck option misspelt (schema)": (
        _set("services/postgres/healthcheck/intervall", "5s"),
        schema_problems,
    ),
    "an unknown depends_on condition (schema)": (
        _set("services/migrate/depends_on/postgres/condition", "service_ready"),
        schema_problems,
    ),
    "a service key compose does not know (schema)": (_set("services/redis/restrat", "always"), schema_problems),
    "a guest broker URL": (
        _set("services/worker-intake/environment/RELAYBUS_BROKER_URL", "amqp://guest:guest@rabbitmq:5672//"),
        password_problems,
    ),
    "a secret with a default": (
        _set("services/postgres/environment/POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-postgres}"),
        password_problems,
    ),
    "a literal redis password on the command line": (
        _set("services/redis/command", ["redis-server", "--requirepass", "hunter2"]),
        password_problems,
    ),
    "a literal Flower login": (_set("services/flower/environment/FLOWER_BASIC_AUTH", "admin:admin"), password_problems),
    "Flower without auth": (
        _set("services/flower/command", ["celery", "-A", "relaybus", "flower", "--port=5555"]),
        flower_problems,
    ),
    "Flower's API opened": (_set("services/flower/environment/FLOWER_UNAUTHENTICATED_API", "true"), flower_problems),
    "Flower without the management API": (
        lambda doc: doc["services"]["flower"]["command"].__setitem__(
            2, doc["services"]["flower"]["command"][2].replace("FLOWER_BROKER_API", "FLOWER_OTHER")
        ),
        flower_problems,
    ),
    "RabbitMQ without the management plugin": (_set("services/rabbitmq/image", "rabbitmq:4.1.6"), flower_problems),
    "postgres without healthcheck": (_drop("services/postgres/healthcheck"), healthcheck_problems),
    "workers only wait for rabbitmq to start": (
        lambda doc: [
            s["depends_on"].update(rabbitmq={"condition": "service_started"}) for s in worker_services(doc).values()
        ],
        dependency_problems,
    ),
    "flower does not wait for redis": (_drop("services/flower/depends_on/redis"), dependency_problems),
    "workers only wait for the migration to start": (
        lambda doc: [
            s["depends_on"].update(migrate={"condition": "service_started"}) for s in worker_services(doc).values()
        ],
        migration_problems,
    ),
    "the migration restarts": (_set("services/migrate/restart", "always"), migration_problems),
    "no migration job": (_drop("services/migrate"), migration_problems),
    "redis may evict": (_set("services/redis/command", ["redis-server", "--maxmemory", "1gb"]), redis_problems),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_rule_reports_a_compose_file_broken_in_its_way(case):
    mutate, rule = BROKEN[case]
    # A fresh parse, not the module's fixture: mutations change the document in place (and, through the
    # anchors, every service that merges the changed mapping).
    doc = load(COMPOSE.read_text())
    assert rule(doc) == [], "the unbroken file already fails this rule"
    mutate(doc)
    assert rule(doc) != []


def test_the_env_example_rule_reports_a_filled_in_secret_and_an_undocumented_variable(compose):
    good = ENV_EXAMPLE.read_text()
    assert env_example_problems(compose, good) == []
    assert env_example_problems(compose, good + "REDIS_PASSWORD=hunter2\n") != []
    assert env_example_problems(compose, good.replace("POSTGRES_APP_USER=relaybus_app\n", "")) != []


def test_the_dockerfile_and_image_rules_report_a_floating_base_image(compose):
    text = DOCKERFILE.read_text()
    assert image_problems(compose, text) == []
    assert image_problems(compose, re.sub(r"^FROM \S+", "FROM python:3.11-slim", text, flags=re.MULTILINE)) != []


def test_the_secret_rule_reports_secrets_that_git_would_commit(compose):
    assert secret_problems(compose, GITIGNORE.read_text().replace("secrets/*\n", "")) != []


def test_the_guest_rule_reports_a_guest_account():
    assert guest_problems("RABBITMQ_DEFAULT_USER: Guest") != []


def test_the_anchor_rule_reports_a_worker_written_out_in_full():
    text = COMPOSE.read_text()
    spelled_out = text.replace("  worker-urgent:\n    <<: *worker\n", "  worker-urgent:\n    image: relaybus:local\n")
    assert spelled_out != text
    assert anchor_problems(spelled_out) != []


def test_the_dockerfile_rule_reports_a_missing_package_and_a_missing_install():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text.replace("COPY eventstore ./eventstore\n", "")) != []
    assert dockerfile_problems(re.sub(r"pip install '?\.(\[[a-z,]+\])?'?", "pip install celery", text)) != []
