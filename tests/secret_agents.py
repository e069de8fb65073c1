"""An agent that handles secrets, for the secret-sink test (tests/integration/test_secret_sinks.py).

Its input carries a key under a sensitive name (``api_key``) and free text that ends up in an LLM prompt;
its output nests credentials; asked to, it fails with a secret in its error message.
"""

from __future__ import annotations

import hashlib

from relaybus.tasks.errors import PermanentError
from relaybus.tasks.llm import complete
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent


class VaultInput(AgentModel):
    api_key: str
    #: Free text the agent puts in its LLM prompt (no sensitive key: only a value pattern can find a secret).
    topic: str
    fail: bool = False


class Account(AgentModel):
    owner: str
    credentials: dict[str, str]


class VaultOutput(AgentModel):
    summary: str
    account: Account
    #: Proof that the agent received the real key, not a mask.
    key_length: int


@agent("vault", input=VaultInput, output=VaultOutput)
def vault(inp: VaultInput, ctx: AgentContext) -> VaultOutput:
    if inp.fail:  # the error quotes a secret the agent derived (not its input: that is another sink's case)
        derived = hashlib.sha256(inp.api_key.encode()).hexdigest()[:24]
        raise PermanentError(f"the upstream refused the login: password={derived} was rejected")
    answer = complete(ctx.llm, system="You are a careful summariser.",
                      user=f"Summarise this request. {inp.topic}. Keep it short.")
    return VaultOutput(summary=answer.text, account=Account(owner="ops", credentials={"token": inp.api_key[::-1]}),
                       key_length=len(inp.api_key))
