"""Recording completions as they happen, and serving them again without a provider.

A run records every completion (the event log stores an ``llm.completed`` event through
:class:`RecordingProvider`'s hook); a replay of that run builds a :class:`ReplayProvider` from the
recorded completions and gets the same texts back, byte for byte, with the network switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from relaybus.tasks.llm._errors import CompletionNotRecorded
from relaybus.tasks.llm._models import Completion, CompletionRequest
from relaybus.tasks.llm._provider import LLMProvider


class RecordingProvider:
    """Delegates to ``inner`` and calls ``on_completion(request, completion)`` after each completion.

    Failed calls are not recorded (there is no completion to record). An error raised by the hook
    propagates: a completion that could not be recorded must not be used as if it had been, since
    the record is what a replay relies on.
    """

    def __init__(
        self, inner: LLMProvider, on_completion: Callable[[CompletionRequest, Completion], None]
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self._on_completion = on_completion

    def __repr__(self) -> str:
        return f"RecordingProvider(inner={self.inner!r})"

    def complete(self, request: CompletionRequest) -> Completion:
        completion = self.inner.complete(request)
        self._on_completion(request, completion)
        return completion


class ReplayProvider:
    """Serves recorded completions by request fingerprint.

    A request that was not recorded goes to ``fallback`` when there is one, and otherwise raises
    :class:`CompletionNotRecorded` (permanent) naming the fingerprint. ``name`` and ``model`` are
    those of the provider it stands in for, so wrappers see the same keys in a replay as in the run.
    """

    def __init__(
        self,
        recorded: Mapping[str, Completion],
        fallback: LLMProvider | None = None,
        *,
        name: str = "replay",
        model: str = "recorded",
    ) -> None:
        self.name = fallback.name if fallback is not None else name
        self.model = fallback.model if fallback is not None else model
        for fingerprint, completion in recorded.items():
            if completion.request_fingerprint != fingerprint:
                raise ValueError(
                    f"completion recorded under fingerprint {fingerprint} answers request "
                    f"{completion.request_fingerprint}"
                )
        self._recorded = MappingProxyType(dict(recorded))
        self.fallback = fallback

    @classmethod
    def from_completions(
        cls, completions: Iterable[Completion], fallback: LLMProvider | None = None
    ) -> ReplayProvider:
        """Index completions by the fingerprint they carry; a later one for the same request wins."""
        return cls({c.request_fingerprint: c for c in completions}, fallback=fallback)

    @classmethod
    def standing_in_for(cls, provider: LLMProvider, recorded: Mapping[str, Completion]) -> ReplayProvider:
        """A replay without fallback that answers to ``provider``'s name and model."""
        return cls(recorded, name=provider.name, model=provider.model)

    def __repr__(self) -> str:
        return f"ReplayProvider(recorded={len(self._recorded)}, fallback={self.fallback!r})"

    def __len__(self) -> int:
        return len(self._recorded)

    def complete(self, request: CompletionRequest) -> Completion:
        fingerprint = request.fingerprint()
        recorded = self._recorded.get(fingerprint)
        if recorded is not None:
            return recorded
        if self.fallback is None:
            raise CompletionNotRecorded(fingerprint)
        return self.fallback.complete(request)
