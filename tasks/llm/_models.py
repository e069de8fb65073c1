"""The messages that cross the provider boundary: a chat request and the completion it produced."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatMessage(_Frozen):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class CompletionRequest(_Frozen):
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    #: ``None`` lets the provider use its configured model.
    model: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)

    def fingerprint(self) -> str:
        """A stable id for this request: the sha256 of its canonical JSON.

        Recorded completions are matched to requests by it, so it must not change between
        processes or releases: keys sorted, no whitespace, UTF-8 kept as is. A test pins one value.
        """
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Usage(_Frozen):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class Completion(_Frozen):
    text: str
    model: str
    #: The :attr:`LLMProvider.name` that produced the text (``offline``, ``openai``).
    provider: str
    usage: Usage = Field(default_factory=Usage)
    request_fingerprint: str
