"""Declaring pipelines: names, stages, the fan-in input built for the callback, and refusals before sending."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from relaybus import AgentContext, AgentModel, Pipeline, StepInput, agent, start
from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.errors import InvalidInput, PermanentError, PipelineError, UnknownPipeline
from relaybus.tasks.pipelines.registry import declared, pipeline_named, stage_of
from relaybus.tasks.runtime.settle import member_failure


class Order(AgentModel):
    order_id: str
    items: list[str]


class Priced(AgentModel):
    order_id: str
    items: list[str]


class Item(AgentModel):
    name: str


class Quote(AgentModel):
    name: str
    price: float


class Bill(AgentModel):
    order_id: str
    quotes: list[Quote]
    missing: list[dict[str, Any]] = []


@agent("pricer", input=Order, output=Priced)
def price(order: Order, ctx: AgentContext) -> Priced:
    return Priced(order_id=order.order_id, items=order.items)


@agent("quoter", input=Item, output=Quote)
def quote(item: Item, ctx: AgentContext) -> Quote:
    return Quote(name=item.name, price=1.0)


@agent("biller", input=Bill, output=Bill)
def bill(inp: Bill, ctx: AgentContext) -> Bill:
    return inp


def billing(name: str) -> Pipeline[Order]:
    return (
        Pipeline(name, input=Order, description="Price an order")
        .step(price)
        .fan_out(
            quote,
            each=lambda s: [{"name": n} for n in (s.prev or {})["items"]],
            into=bill,
            into_input=lambda s: {"order_id": s.run.order_id},
            results="quotes",
            failures="missing",
            partial=True,
        )
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_a_declared_pipeline_is_found_by_name_and_knows_its_steps_and_agents():
    pipeline = billing(unique("billing"))
    assert pipeline_named(pipeline.name) is pipeline
    assert pipeline in declared()
    assert [s.name for s in pipeline.stages] == ["pricer", "quoter", "biller"]
    assert pipeline.agents == ["pricer", "quoter", "biller"]
    assert stage_of(pipeline.name, "agents.quoter") == "quoter"
    assert stage_of(pipeline.name, "agents.nobody") is None
    assert pipeline.describe()[1] == "fan-out quoter: agents.quoter"
    assert pipeline.task == f"pipelines.{pipeline.name}"


def test_the_callback_gets_the_members_outputs_and_failures_under_the_fields_it_names():
    pipeline = billing(unique("billing"))
    run = Order(order_id="o1", items=["a", "b"])
    failed = member_failure("agents.quoter", "t1", PermanentError("no price for b"))
    kwargs = pipeline.fan_in_input(1, [{"name": "a", "price": 1.0}, failed], StepInput(run, {"items": []}, "p"))
    inp = Bill.model_validate(kwargs)
    assert inp.order_id == "o1"
    assert [q.name for q in inp.quotes] == ["a"]
    assert inp.missing == [{"task": "agents.quoter", "task_id": "t1", "error_type": "PermanentError",
                            "error_message": "no price for b"}]
    with pytest.raises(ValueError, match="not a fan-out"):
        pipeline.fan_in_input(0, [], StepInput(run, None, "p"))


def test_bad_declarations_are_refused_with_the_problem_named():
    with pytest.raises(ValueError, match="invalid pipeline name"):
        Pipeline("Not A Name", input=Order)
    with pytest.raises(ValueError, match="already has a step named 'pricer'"):
        Pipeline(unique("twice"), input=Order).step(price).step(price)
    with pytest.raises(TypeError, match="is not an agent"):
        Pipeline(unique("plain"), input=Order).step(print)  # type: ignore[arg-type]


def test_starting_refuses_unknown_pipelines_agents_without_queues_and_bad_input_before_sending():
    app = create_app(Settings(broker_url="memory://", namespace=unique("t")))
    with pytest.raises(UnknownPipeline, match=r"unknown pipeline 'nope'.*RELAYBUS_EXTRA_MODULES"):
        start("nope", {}, app=app)
    pipeline = billing(unique("billing"))
    with pytest.raises(PipelineError, match="pricer, quoter, biller with no queue"):
        start(pipeline.name, {"order_id": "o1", "items": []}, app=app)
    served = create_app(Settings(broker_url="memory://", namespace=unique("t"),
                                 extra_agents=("pricer", "quoter", "biller")))
    with pytest.raises(InvalidInput, match=f"invalid input for pipeline '{pipeline.name}': order_id"):
        pipeline.start({"items": []}, app=served)
