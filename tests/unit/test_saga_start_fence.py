"""How long a new saga's first step waits for its saga (SAGA_STARTING_HEADER), read from its message."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import pytest

from relaybus.tasks.saga.steps import SAGA_STARTING_HEADER, SAGA_STARTING_WAIT_MAX_S, _starting_until


def _request(value: Any, *, as_attribute: bool = True) -> SimpleNamespace:
    if as_attribute:
        return SimpleNamespace(**{SAGA_STARTING_HEADER: value, "headers": None})
    return SimpleNamespace(headers={SAGA_STARTING_HEADER: value})


@pytest.mark.parametrize("as_attribute", [True, False], ids=["on-the-request", "in-its-headers"])
def test_a_step_waits_until_its_message_says_and_no_longer_than_the_cap(as_attribute: bool) -> None:
    soon = time.time() + 5
    assert _starting_until(_request(soon, as_attribute=as_attribute)) == soon
    capped = _starting_until(_request(time.time() + 10 * SAGA_STARTING_WAIT_MAX_S, as_attribute=as_attribute))
    assert capped is not None and capped <= time.time() + SAGA_STARTING_WAIT_MAX_S


@pytest.mark.parametrize("value", [None, True, "soon", math.nan, 0, -1.0, "1e30"], ids=repr)
def test_a_step_whose_message_says_nothing_usable_does_not_wait(value: Any) -> None:
    assert _starting_until(_request(value)) is None
    assert _starting_until(SimpleNamespace(headers=None)) is None


def test_a_copy_republished_after_the_time_passed_does_not_wait() -> None:
    assert _starting_until(_request(time.time() - 0.001)) is None
