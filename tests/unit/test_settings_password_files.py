"""``RELAYBUS_*_PASSWORD_FILE``: a URL names its user, a secret file its password; no secret in the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from kombu.utils.url import url_to_parts
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from relaybus.settings import Settings

PASSWORD = "p@ss:w/rd%20 x"  # every character a URL gives a meaning to


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text(PASSWORD + "\n")  # as `openssl rand … > file` leaves it: with a newline
    return str(path)


def test_each_url_gets_the_password_from_its_file_and_every_client_reads_it_back(password_file: str) -> None:
    settings = Settings(
        broker_url="amqp://relaybus@rabbitmq:5672/relaybus",
        broker_password_file=password_file,
        result_backend="redis://redis:6379/0",
        result_backend_password_file=password_file,
        eventstore_url="postgresql+psycopg://relaybus_app@postgres:5432/relaybus",
        eventstore_password_file=password_file,
    )
    broker = url_to_parts(settings.broker_url)
    assert (broker.username, broker.password, broker.hostname, broker.path) == (
        "relaybus", PASSWORD, "rabbitmq", "relaybus"
    )
    assert redis.connection.parse_url(settings.result_backend)["password"] == PASSWORD
    store = make_url(settings.eventstore_url)
    assert (store.username, store.password, store.host, store.database) == (
        "relaybus_app", PASSWORD, "postgres", "relaybus"
    )
    # Handed to a worker process (to_env), the same settings read back the same.
    env = {k.removeprefix("RELAYBUS_").lower(): v for k, v in settings.to_env().items()}
    again = Settings(**{k: v for k, v in env.items() if k in Settings.model_fields})
    assert again.broker_url == settings.broker_url and again.eventstore_url == settings.eventstore_url


def test_a_missing_file_or_a_second_password_is_refused_without_showing_any_secret(password_file: str) -> None:
    with pytest.raises(ValidationError) as missing:
        Settings(eventstore_password_file="/nonexistent/secret")
    assert "RELAYBUS_EVENTSTORE_PASSWORD_FILE (/nonexistent/secret)" in str(missing.value)
    with pytest.raises(ValidationError) as twice:
        Settings(broker_url="amqp://relaybus:other-secret@rabbitmq//", broker_password_file=password_file)
    assert "RELAYBUS_BROKER_URL holds a password and its password file another" in str(twice.value)
    assert "other-secret" not in str(twice.value) and PASSWORD not in str(twice.value)
