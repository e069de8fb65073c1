"""Reaching the real services the integration tests need.

A test that cannot reach RabbitMQ, Redis or PostgreSQL skips on a developer's laptop and fails
under ``CI=true``: CI must never go green because a service was down.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

RABBITMQ_URL = os.environ.get("RELAYBUS_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("RELAYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("RELAYBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if the service answers; otherwise skip, or fail under CI."""
    if _reachable(url, default_port):
        return url
    unavailable(f"{name} is not reachable at {urlsplit(url).hostname}:{urlsplit(url).port or default_port}")


def unavailable(message: str) -> NoReturn:
    """Skip the test for want of ``message``'s service or tool; fail it under CI, where nothing may skip."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: integration tests must not skip)", pytrace=False)
    pytest.skip(message)


#: The browser the console's and Flower's browser tests drive: Debian's (.ci/run installs it), never a download.
CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    return CHROMIUM


def require_rabbitmq() -> str:
    return require("RabbitMQ", RABBITMQ_URL, 5672)


def require_redis() -> str:
    return require("Redis", REDIS_URL, 6379)


def require_postgres() -> str:
    return require("PostgreSQL", POSTGRES_URL, 5432)
