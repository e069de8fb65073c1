"""A chord failed inside Celery's own join by a full Redis still says the result backend refused a write."""

from __future__ import annotations

from celery.exceptions import ChordError
from redis.exceptions import OutOfMemoryError

from relaybus.tasks.runtime.results import REFUSED, refused_chord_error


def test_celerys_join_error_from_a_refused_write_is_reworded_as_a_refusal() -> None:
    # What Celery 5.7's join makes of its claim script refused by a full Redis (redis-py's repr).
    joined = ChordError(f"Join error: {OutOfMemoryError('command not allowed when used memory > maxmemory')!r}")
    reworded = refused_chord_error(joined)
    assert isinstance(reworded, ChordError) and str(reworded).startswith(f"{REFUSED}: ")
    assert "OutOfMemoryError" in str(reworded)


def test_other_chord_errors_and_refusals_already_said_are_left_alone() -> None:
    other = ChordError("Dependency 1234 raised ValueError('boom')")
    assert refused_chord_error(other) is other
    said = ChordError(f"{REFUSED}: chord g cannot join: Redis refused to count its member t (OOM ...)")
    assert refused_chord_error(said) is said
    plain = OutOfMemoryError("not a chord's error")
    assert refused_chord_error(plain) is plain
