from __future__ import annotations

import pytest
from celery import Celery
from celery.canvas import _chain, _chord

from relaybus.tasks.pipelines.canvas import fan_in, sequence, settled
from relaybus.tasks.runtime.settle import SETTLE_HEADER, MemberFailure, member_failure, results_of, split_results

app = Celery(set_as_current=False)


def member(i: int):
    return app.signature("agents.researcher", kwargs={"index": i})


CALLBACK = app.signature("agents.writer", kwargs={"request": "r"})
ERRBACK = app.signature("pipelines.fail", kwargs={"pipeline": "p"})


def errbacks(sig) -> list[str]:
    return [e["task"] for e in sig.options.get("link_error", [])]


def test_no_members_calls_the_callback_at_once_with_an_empty_list():
    flow = fan_in([], CALLBACK, on_error=ERRBACK)
    assert flow.task == "agents.writer" and flow.args == ([],)
    assert errbacks(flow) == ["pipelines.fail"]


def test_one_member_is_a_chain_not_a_chord_of_one():
    flow = fan_in([member(0)], CALLBACK, on_error=ERRBACK)
    assert isinstance(flow, _chain)
    assert [t.task for t in flow.tasks] == ["agents.researcher", "agents.writer"]
    assert all(errbacks(t) == ["pipelines.fail"] for t in flow.tasks)


def test_many_members_are_a_chord_with_the_errback_on_every_member_and_the_body():
    flow = fan_in([member(i) for i in range(3)], CALLBACK, on_error=ERRBACK)
    assert isinstance(flow, _chord)
    assert len(flow.tasks) == 3
    for task in [*flow.tasks, flow.body]:
        (errback,) = task.options["link_error"]
        assert errback["kwargs"] == {"pipeline": "p"}
        assert not errback.get("immutable"), "the errback must receive the failed task's id"


def test_settled_members_carry_the_settle_header_and_the_originals_are_untouched():
    original = member(0)
    flow = fan_in([original, member(1)], CALLBACK, settle=True)
    assert all(t.options["headers"][SETTLE_HEADER] == 1 for t in flow.tasks)
    assert "headers" not in original.options
    assert settled(original).options["headers"] == {SETTLE_HEADER: 1}


def test_a_sequence_links_the_errback_to_each_step():
    flow = sequence(member(0), CALLBACK, on_error=ERRBACK)
    assert all(errbacks(t) == ["pipelines.fail"] for t in flow.tasks)
    with pytest.raises(ValueError):
        sequence()


def test_results_of_always_gives_a_list():
    assert results_of(None) == []
    assert results_of({"a": 1}) == [{"a": 1}]
    assert results_of([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]


def test_split_results_separates_marked_failures_in_member_order():
    failure = member_failure("agents.researcher", "t-2", RuntimeError("boom"))
    ok, failed = split_results([{"a": 1}, failure, {"b": 2}])
    assert ok == [{"a": 1}, {"b": 2}]
    assert failed == [MemberFailure(task="agents.researcher", task_id="t-2", error_type="RuntimeError",
                                    error_message="boom")]
