"""Masking secrets and bounding sizes before anything is written.

A key is sensitive when, split into words (``snake_case``, ``kebab-case``, ``camelCase``), it
contains a configured key's words in a row, ignoring case: with ``token`` configured,
``token``, ``github_token``, ``accessToken`` and ``X-Token`` are masked, while ``max_tokens`` and
``input_tokens`` (usage counts an LLM call reports) are not. The whole value under a sensitive key
is replaced, whatever its type.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from relaybus.eventstore.hashing import canonical_json, sha256_hex

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_CONTAINERS = (dict, list)


def words(key: str) -> tuple[str, ...]:
    """``"X-Api-Key"`` -> ``("x", "api", "key")``; ``"apiKey"`` -> ``("api", "key")``."""
    return tuple(w for w in _SEPARATORS.split(_CAMEL.sub("_", key).lower()) if w)


def _contains_run(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


class Redactor:
    """Replaces the values of sensitive keys, recursively through dicts and lists."""

    def __init__(self, keys: Iterable[str], mask: str = "[REDACTED]") -> None:
        self.mask = mask
        self._needles = tuple({words(k) for k in keys if words(k)})
        # Payload keys repeat endlessly (the same few field names); remember the verdicts.
        self.is_sensitive = functools.lru_cache(maxsize=8192)(self._is_sensitive)

    def _is_sensitive(self, key: str) -> bool:
        haystack = words(key)
        return any(_contains_run(haystack, needle) for needle in self._needles)

    def may_redact(self, text: str) -> bool:
        """False when ``text`` (the value's JSON) certainly holds no sensitive key.

        A sensitive key holds every word of some needle, and JSON leaves letters and digits as they
        are: if, lower-cased, the text misses a word of every needle, there is nothing to walk (most
        payloads). Outside ASCII, ``lower()`` may not be what the key's words were made of: walk.
        """
        if not self._needles:
            return False
        if not text.isascii():
            return True
        lowered = text.lower()
        for needle in self._needles:  # plain loops: generator expressions cost more than the search
            for word in needle:
                if word not in lowered:
                    break
            else:
                return True
        return False

    def redact(self, value: Any) -> Any:
        """``value`` with every sensitive key's value replaced by the mask.

        Containers with nothing to mask are returned as they are (not copied); the input is never
        modified.
        """
        if not self._needles:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            changed = False
            for key, item in value.items():
                if isinstance(key, str) and self.is_sensitive(key):
                    out[key] = self.mask
                    changed = True
                elif isinstance(item, _CONTAINERS):
                    out[key] = new = self._walk(item)
                    changed = changed or new is not item
                else:
                    out[key] = item
            return out if changed else value
        if isinstance(value, list):
            items = [self._walk(item) if isinstance(item, _CONTAINERS) else item for item in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    def redact_to_json(self, value: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """``(redacted value, its canonical JSON)``, serialising once when there is nothing to mask."""
        if not value:
            return value, "{}"
        text = canonical_json(value)
        if self.may_redact(text):
            redacted = self._walk(value)
            if redacted is not value:
                return redacted, canonical_json(redacted)
        return value, text


def fit(value: dict[str, Any], text: str, max_bytes: int, preview_chars: int) -> tuple[dict[str, Any], str]:
    """``(value, text)`` if ``text``, the value's canonical JSON, fits in ``max_bytes``; else a truncation
    record and its JSON.

    The record keeps the original size in bytes and the sha256 of the original canonical JSON, so
    a copy kept elsewhere can still be matched to it.
    """
    if len(text) <= max_bytes // 4 or len(text.encode("utf-8")) <= max_bytes:  # the first test is cheap
        return value, text
    record = {
        "_truncated": True,
        "size": len(text.encode("utf-8")),
        "sha256": sha256_hex(text),
        "preview": text[: min(preview_chars, max_bytes // 4)],
    }
    return record, canonical_json(record)


def bound_size(value: dict[str, Any], max_bytes: int, preview_chars: int) -> dict[str, Any]:
    """:func:`fit` without the JSON."""
    return fit(value, canonical_json(value), max_bytes, preview_chars)[0]
