"""Settings of the example site: Django on SQLite, relaybus on RabbitMQ, Redis and its event log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

# Never a key written in the repository. Without DJANGO_SECRET_KEY every start makes a new one, which
# is fine for this site: it has no sessions or signed cookies to keep valid across restarts.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or get_random_secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG", "").lower() in {"1", "true", "yes"}
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

INSTALLED_APPS = ["workflows"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "relaybus_site.urls"
WSGI_APPLICATION = "relaybus_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# Django's own tables (the requests people made). The workflows' history lives in relaybus's event log.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite")),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

#: relaybus settings for this site, as keyword arguments of ``relaybus.Settings`` (for example
#: ``{"namespace": "agents", "broker_url": "amqp://..."}``). Whatever is not given here is read from the
#: ``RELAYBUS_*`` environment variables, as the workers read it: the site and the workers must agree on
#: the broker, the namespace and the event store.
RELAYBUS: dict[str, Any] = {}

#: The outbox of pipeline starts (``workflows.outbox``): after a failed publish, the next attempt waits
#: ``backoff_s`` doubled per attempt up to ``backoff_max_s`` (each jittered to 50-100 %).
RELAYBUS_OUTBOX: dict[str, float] = {"backoff_s": 2.0, "backoff_max_s": 300.0}
