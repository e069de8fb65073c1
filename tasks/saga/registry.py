"""The saga definitions this process knows, and its repository: one per event store URL, per process.

A module that defines a saga registers it next to its step agents (``register_saga(...)``), so a
worker that loads the module knows the saga. A client process learns the definitions the same way:
:func:`repository` loads the app's task modules (``BUILTIN_MODULES`` and ``RELAYBUS_EXTRA_MODULES``)
once, the first time it is asked for, because starting a saga needs its first step and reading one
needs its definition.
"""

from __future__ import annotations

from celery import Celery

from relaybus.sagas import SagaDefinition, SagaRegistry, SagaRepository
from relaybus.tasks.runtime.config import resources, runtime_config

SAGAS = SagaRegistry()
"""Every saga definition registered in this process."""


def register_saga(definition: SagaDefinition) -> SagaDefinition:
    """Make ``definition`` known to this process (harmless if the same definition is registered again)."""
    return SAGAS.register(definition)


def saga_definition(name: str, app: Celery) -> SagaDefinition:
    """The definition registered under ``name``; :class:`~sagas.UnknownSaga` if none is, after loading
    the app's modules."""
    _load_modules(app)
    return SAGAS.get(name)


def known_sagas(app: Celery) -> list[str]:
    _load_modules(app)
    return sorted(d.name for d in SAGAS)


def repository(app: Celery) -> SagaRepository:
    """This process's repository on the app's event store (built lazily, rebuilt after a fork)."""
    from relaybus.eventstore import open_store
    from relaybus.tasks.runtime.claimcheck import store_config

    config = runtime_config(app)

    def build() -> SagaRepository:
        _load_modules(app)
        # Large step results by reference, not truncated, as in every record (tasks.runtime.claimcheck).
        store = open_store(config.eventstore_url, config=store_config(config))
        return SagaRepository(store, SAGAS)

    repo: SagaRepository = resources().get(f"sagas:{config.eventstore_url}", build)
    return repo


def _load_modules(app: Celery) -> None:
    # Workers have loaded them already (a no-op then); a client loads them on first use.
    if not app.conf.get("relaybus_sagas_loaded"):
        app.loader.import_default_modules()
        app.conf.relaybus_sagas_loaded = True


__all__ = ["SAGAS", "known_sagas", "register_saga", "repository", "saga_definition"]
