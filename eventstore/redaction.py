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

from eventstore.hashing import canonical_json, sha256_hex

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")


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

    def redact(self, value: Any) -> Any:
        """A copy of ``value`` with every sensitive key's value replaced by the mask."""
        if not self._needles:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: self.mask if isinstance(k, str) and self.is_sensitive(k) else self._walk(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value


def bound_size(value: dict[str, Any], max_bytes: int, preview_chars: int) -> dict[str, Any]:
    """``value`` itself if its compact JSON fits in ``max_bytes``, else a truncation record.

    The record keeps the original size in bytes and the sha256 of the original canonical JSON, so
    a copy kept elsewhere can still be matched to it.
    """
    text = canonical_json(value)
    if len(text) <= max_bytes // 4:  # cheap: even at 4 bytes per character it fits
        return value
    size = len(text.encode("utf-8"))
    if size <= max_bytes:
        return value
    return {
        "_truncated": True,
        "size": size,
        "sha256": sha256_hex(text),
        "preview": text[: min(preview_chars, max_bytes // 4)],
    }
