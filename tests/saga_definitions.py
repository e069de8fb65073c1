"""Saga definitions used only by the integration tests. Workers import this module (RELAYBUS_EXTRA_MODULES).

``test_stalled_step``: a draft is written, then a step on the ``probe`` queue, which no saga test
worker consumes: its messages are never answered, as if they vanished with a dead worker. Its
deadline is short and its policy is "retry once, then compensate", so the sweep has work to do.
"""

from __future__ import annotations

from relaybus.sagas import SagaDefinition, Step
from relaybus.tasks.saga import register_saga

STALLED = register_saga(
    SagaDefinition(
        name="test_stalled_step",
        steps=(
            Step(
                name="writing",
                task="agents.writer.saga_draft",
                compensation="agents.writer.discard_draft",
                timeout_s=60,
            ),
            Step(
                name="stalled",
                task="agents.probe.saga_never_answers",
                timeout_s=1.0,
                on_timeout="retry",
                max_attempts=2,
            ),
        ),
    )
)
