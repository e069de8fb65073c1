# The relaybus image: the `relaybus` command (workers, migrations, CLI) and `celery ... flower`.
# docker-compose.yml builds it once and runs every relaybus service from it.
# An exact release, so a rebuild gets the same base (pin its digest too where you can pull:
# `FROM python:3.11.13-slim-bookworm@sha256:…`).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package is made of (no .venv, .git or local databases in the image).
COPY pyproject.toml README.md ./
COPY project ./project
COPY tasks ./tasks
COPY sagas ./sagas
COPY eventstore ./eventstore

# A regular (non-editable) install: the four folders become the one import package `relaybus` (pyproject's
# package-dir). The alembic revisions, which are not a package of their own, are installed as package data
# (pyproject's [tool.setuptools.package-data]); the check below fails the build if they ever go missing.
RUN pip install '.[web]' \
    && relaybus --help > /dev/null \
    && python -c "import relaybus.eventstore.migrations as m, pathlib; \
assert any(pathlib.Path(m.__file__).parent.glob('versions/*.py')), 'migrations missing'"

# Workers run unprivileged: nothing here needs root, and a misbehaving agent should not have it.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin relaybus \
    && mkdir -p /app/.relaybus && chown relaybus /app/.relaybus
USER relaybus

CMD ["relaybus", "--help"]
