"""A deterministic stand-in for an LLM: no network, the same request always gives the same text.

It is the default provider, so tests and demos are reproducible. Agents keep their decisions in
Python; they use the text as content, and this provider makes that content recognisable::

    <role>: <first sentences of the user message> Key terms: <terms>. #<tag>

- ``role`` comes from the system prompt's "You are the …" phrase (``"You are the intake agent."``
  gives ``intake``), or its first word, or ``assistant`` when there is no system prompt.
- The summary is the first two sentences of the last user message, cut at a word near 240
  characters.
- Key terms are the five most frequent words of four letters or more in that message, stop words
  left out, ties in order of first appearance.
- ``tag`` is the first 8 hex digits of the request's fingerprint: a different request (another
  model, temperature or message) gets a different tag even when the summary is the same.

``max_tokens`` is honoured by counting a word as a token and cutting the text there. Usage counts
words the same way.
"""

from __future__ import annotations

import re
from collections import Counter

from relaybus.tasks.llm._models import Completion, CompletionRequest, Usage

_SUMMARY_SENTENCES = 2
_SUMMARY_CHARS = 240
_KEY_TERMS = 5

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z][a-z0-9\-]*")
_ROLE_PHRASE = re.compile(r"\byou are (?:an?|the)\s+([a-z][a-z\- ]*)")


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_PHRASE_STOPS = _word_set("who that which for of in on and with to at by from")
_ADJECTIVES = _word_set("helpful friendly expert senior careful concise diligent meticulous")
_GENERIC_NOUNS = _word_set("agent assistant bot model")
_STOP_WORDS = _word_set(
    """
    about above after again against also because been before being below between both could does
    doing down during each every from further have having here into itself just more most much must
    only other over same should some such than that their them then there these they this those
    through under until very were what when where which while whom will with would your yours
    """
)


class OfflineProvider:
    """Answers every request locally and deterministically; see the module docstring for the format."""

    def __init__(self, model: str = "offline-echo", *, name: str = "offline") -> None:
        self.name = name
        self.model = model

    def __repr__(self) -> str:
        return f"OfflineProvider(name={self.name!r}, model={self.model!r})"

    def complete(self, request: CompletionRequest) -> Completion:
        fingerprint = request.fingerprint()
        system = next((m.content for m in request.messages if m.role == "system"), "")
        user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        parts = [f"{_role(system)}:", _summary(user) or "(no input)"]
        terms = _key_terms(user)
        if terms:
            parts.append(f"Key terms: {', '.join(terms)}.")
        parts.append(f"#{fingerprint[:8]}")
        words = " ".join(parts).split()
        if request.max_tokens is not None:
            words = words[: request.max_tokens]
        text = " ".join(words)
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return Completion(
            text=text,
            model=request.model or self.model,
            provider=self.name,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words)),
            request_fingerprint=fingerprint,
        )


def _role(system: str) -> str:
    lowered = system.lower()
    match = _ROLE_PHRASE.search(lowered)
    if match is None:
        first = _WORD.search(lowered)
        return first.group(0) if first else "assistant"
    words: list[str] = []
    for word in match.group(1).split():
        if word in _PHRASE_STOPS or len(words) == 3:
            break
        words.append(word)
    while len(words) > 1 and words[0] in _ADJECTIVES:
        words.pop(0)
    while len(words) > 1 and words[-1] in _GENERIC_NOUNS:
        words.pop()
    return words[-1] if words else "assistant"


def _summary(text: str) -> str:
    flat = " ".join(text.split())
    summary = " ".join(_SENTENCE_END.split(flat)[:_SUMMARY_SENTENCES])
    if len(summary) <= _SUMMARY_CHARS:
        return summary
    cut = summary[:_SUMMARY_CHARS].rsplit(" ", 1)[0]
    return cut + "…"


def _key_terms(text: str) -> list[str]:
    words = [w.strip("-") for w in _WORD.findall(text.lower())]
    counts = Counter(w for w in words if len(w) >= 4 and w not in _STOP_WORDS)
    first_seen = {w: i for i, w in reversed(list(enumerate(words)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:_KEY_TERMS]
