from __future__ import annotations

from alembic.script import ScriptDirectory

from relaybus.eventstore import migrations


def test_the_head_open_store_checks_is_the_newest_revision() -> None:
    assert ScriptDirectory.from_config(migrations.alembic_config()).get_current_head() == migrations.HEAD
