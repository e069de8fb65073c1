from __future__ import annotations

from typing import Any

import pytest

from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.errors import InvalidInput, PermanentError, ProviderUnavailable, TransientError, is_transient
from relaybus.tasks.runtime.task import AgentContext, AgentModel, AgentSpec


class In(AgentModel):
    topic: str
    depth: int = 1


class Out(AgentModel):
    text: str


def fn(inp: In, ctx: AgentContext) -> Out:
    return Out(text=inp.topic * inp.depth)


spec = AgentSpec("t", In, Out, fn)


def test_input_is_validated_with_the_missing_field_named():
    with pytest.raises(InvalidInput) as excinfo:
        spec.build_input((), {"depth": 2})
    assert excinfo.value.errors[0]["loc"] == ("topic",)
    assert "topic" in str(excinfo.value)


def test_unknown_fields_are_refused():
    with pytest.raises(InvalidInput, match="surprise"):
        spec.build_input((), {"topic": "x", "surprise": 1})


def test_a_chain_upstream_dict_is_merged_under_explicit_kwargs():
    assert spec.build_input(({"topic": "up", "depth": 3},), {"depth": 2}) == In(topic="up", depth=2)


def test_an_upstream_list_needs_a_from_upstream_hook():
    with pytest.raises(InvalidInput, match="list"):
        spec.build_input(([{"topic": "a"}],), {})


def test_retry_policy_is_by_error_class():
    assert is_transient(TransientError("x")) and is_transient(ProviderUnavailable("down"))
    assert is_transient(TimeoutError()) and is_transient(ConnectionError())
    assert not is_transient(PermanentError("x")) and not is_transient(InvalidInput("a", []))
    assert not is_transient(KeyError("bug"))


def test_client_refuses_oversized_input_before_publishing():
    app = create_app(Settings(max_payload_bytes=1000, broker_url="memory://", extra_modules=("tests.agents",)))
    app.loader.import_default_modules()
    probe: Any = app.tasks["agents.probe"]
    with pytest.raises(InvalidInput, match="over the limit of 1000"):
        probe.apply_async(kwargs={"key": "k", "label": "x" * 5000})


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ([1, 2], None, "args"),  # more than one positional argument
        (["not a dict"], None, "key"),  # an upstream that does not give the input its fields
        ([{"label": "no key"}], None, "key"),  # a positional input missing a field
        (None, [("key", "k")], "kwargs"),  # kwargs that are not a mapping
        ("abc", None, "args"),  # args that are not a list
    ],
)
def test_client_refuses_malformed_positional_and_keyword_input_before_publishing(
    args: Any, kwargs: Any, named: str
) -> None:
    app = create_app(Settings(broker_url="memory://", extra_modules=("tests.agents",)))
    app.loader.import_default_modules()
    probe: Any = app.tasks["agents.probe"]
    with pytest.raises(InvalidInput) as excinfo:
        probe.apply_async(args=args, kwargs=kwargs)
    assert named in str(excinfo.value)
