"""The reference content-creation saga from the seed article: research -> writing -> review -> publishing.

Research is read-only, so it has nothing to undo and is safe to dispatch again when it times out.
Every later step has a compensation that receives the step's recorded output. The tasks are
named, not imported: they live in ``tasks`` and the executor dispatches them by name.
"""

from __future__ import annotations

from sagas.definition import SagaDefinition, Step

CONTENT_CREATION = SagaDefinition(
    name="content_creation",
    steps=(
        Step(name="research", task="agents.researcher", timeout_s=300, on_timeout="retry", max_attempts=3),
        Step(name="writing", task="agents.writer", compensation="agents.discard_draft", timeout_s=600),
        Step(name="review", task="agents.reviewer", compensation="agents.cancel_review", timeout_s=600),
        Step(name="publishing", task="agents.publisher", compensation="agents.unpublish", timeout_s=120),
    ),
)
