"""The reference content-creation saga from the seed article: research -> writing -> review -> publishing.

Research is read-only, so it has nothing to undo and is safe to dispatch again when it times out.
Every later step has a compensation that receives the step's recorded output. The tasks are
named, not imported: they live in ``tasks.agents.content_saga`` and the executor dispatches them
by name. ``agents.<agent>.<action>`` runs on the agent's queue, next to (not instead of) the
agent's own pipeline task ``agents.<agent>``.
"""

from __future__ import annotations

from relaybus.sagas.definition import SagaDefinition, Step

CONTENT_CREATION = SagaDefinition(
    name="content_creation",
    steps=(
        Step(
            name="research", task="agents.researcher.saga_research", timeout_s=300, on_timeout="retry", max_attempts=3
        ),
        Step(
            name="writing", task="agents.writer.saga_draft", compensation="agents.writer.discard_draft", timeout_s=600
        ),
        Step(
            name="review",
            task="agents.reviewer.saga_review",
            compensation="agents.reviewer.cancel_review",
            timeout_s=600,
        ),
        Step(
            name="publishing",
            task="agents.publisher.saga_publish",
            compensation="agents.publisher.unpublish",
            timeout_s=120,
        ),
    ),
)
