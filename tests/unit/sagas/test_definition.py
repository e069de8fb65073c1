"""Saga definitions refuse what cannot run; the registry finds them by name."""

from __future__ import annotations

from typing import Any

import pytest

from relaybus.sagas import (
    CONTENT_CREATION,
    DefinitionError,
    ParallelStep,
    SagaDefinition,
    SagaRegistry,
    Step,
    UnknownSaga,
    idempotency_key,
    members_of,
)


def _step(name: str = "s1", **overrides: Any) -> Step:
    return Step(**{"name": name, "task": f"agents.{name}", "timeout_s": 30, **overrides})


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: SagaDefinition(name="x", steps=()), "has no steps"),
        (lambda: SagaDefinition(name="x", steps=(_step("a"), _step("a"))), "'a' is used twice"),
        (lambda: ParallelStep(name="p", members=()), "has no members"),
        (lambda: ParallelStep(name="p", members=(_step("m"), _step("m"))), "'m' is used twice"),
        (lambda: _step("a:b"), "contain no ':'"),
        (lambda: _step(""), "non-empty"),
        (lambda: _step(task=" "), "task name"),
        (lambda: _step(compensation=""), "compensation task name"),
        (lambda: _step(timeout_s=0), "timeout_s"),
        (lambda: _step(timeout_s=float("inf")), "timeout_s"),
        (lambda: _step(on_timeout="retry"), "max_attempts >= 2"),
        (lambda: _step(max_attempts=3), "only applies with on_timeout='retry'"),
        (lambda: SagaDefinition(name="", steps=(_step(),)), "saga name"),
    ],
)
def test_a_definition_that_breaks_a_rule_raises_definition_error(build: Any, reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason):
        build()


def test_definitions_are_frozen_and_refuse_unknown_fields() -> None:
    step = _step()
    with pytest.raises(ValueError):
        step.task = "agents.other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Step(name="s", task="agents.s", timeout_s=1, retries=3)  # type: ignore[call-arg]


def test_a_plain_step_is_its_own_single_member() -> None:
    step = _step()
    assert members_of(step) == (step,)
    group = ParallelStep(name="p", members=(_step("a"), _step("b")))
    assert [m.name for m in members_of(group)] == ["a", "b"]


def test_idempotency_keys_are_deterministic_and_carry_no_attempt() -> None:
    assert idempotency_key("saga-1", "p", "a", "step") == "saga-1:p:a:step"
    assert idempotency_key("saga-1", "p", "a", "compensation") == "saga-1:p:a:compensation"


def test_the_registry_finds_a_definition_by_name_and_refuses_a_second_one_under_the_same_name() -> None:
    registry = SagaRegistry([CONTENT_CREATION])
    assert registry.get("content_creation") is CONTENT_CREATION
    assert "content_creation" in registry and len(registry) == 1
    registry.register(CONTENT_CREATION.model_copy())  # the same definition again: harmless
    with pytest.raises(DefinitionError, match="already registered"):
        registry.register(SagaDefinition(name="content_creation", steps=(_step(),)))
    with pytest.raises(UnknownSaga, match="'nope'"):
        registry.get("nope")


def test_the_reference_saga_is_research_writing_review_publishing_with_the_seeds_compensations() -> None:
    steps = [(s.name, s.compensation) for s in CONTENT_CREATION.steps if isinstance(s, Step)]
    assert steps == [
        ("research", None),
        ("writing", "agents.writer.discard_draft"),
        ("review", "agents.reviewer.cancel_review"),
        ("publishing", "agents.publisher.unpublish"),
    ]
