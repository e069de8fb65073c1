"""Masking secrets and bounding sizes: the one redaction every sink of relaybus applies.

The event log, dead-letter headers, stored exceptions, task events (Flower), worker logs, the result
backend and the runtime config's repr all mask with a :class:`Redactor` built from the same settings
(``RELAYBUS_REDACT_KEYS``, ``RELAYBUS_REDACT_PATTERNS``). It lives here, at the bottom of the package
graph, so that every layer can use it.

Two rules:

* **Keys.** A key is sensitive when, split into words (``snake_case``, ``kebab-case``, ``camelCase``), it
  contains a configured key's words in a row, ignoring case: with ``token`` configured, ``token``,
  ``github_token``, ``accessToken`` and ``X-Token`` are masked, while ``max_tokens`` and ``input_tokens``
  (usage counts an LLM call reports) are not. The whole value under a sensitive key is replaced, whatever
  its type. In free text (an exception message, a repr, a log line) ``key=value``, ``key: value``,
  ``'key': {...}`` and ``"key": "..."`` are found by the same rule.
* **Values.** Text that looks like a secret wherever it appears: ``Bearer`` tokens, ``sk-…`` API keys,
  the password of a URL (``scheme://user:pass@host`` keeps its user), AWS access key ids, GitHub and Slack
  tokens, JSON web tokens, and any pattern configured besides.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from relaybus.eventstore.hashing import canonical_json, sha256_hex

#: The one default list of sensitive keys (settings and the event store both start from it).
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "api_key",
    "apikey",
    "access_key",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "credentials",
    "cookie",
    "set-cookie",
    "private_key",
)
DEFAULT_MASK = "[REDACTED]"

#: Values masked wherever they appear, whatever their key, each with the lower-case literals one of which it
#: must contain (a cheap test first: most text holds none) and begin with (``Redactor._may_match_values`` tries
#: a pattern only where a literal starts). A ``keep`` group stays: a URL's user, the scheme of an
#: ``Authorization`` value.
VALUE_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("bearer",), r"(?P<keep>\b(?i:bearer) )[A-Za-z0-9\-._~+/]+=*"),
    (("sk-",), r"\bsk-[A-Za-z0-9_\-]{16,}"),
    (("://",), r"(?P<keep>://[^\s:/@'\"]*:)[^\s@/'\"]+(?=@)"),
    (("akia", "asia"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    (("xox",), r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),
    (("eyj",), r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"),
)
_URL_USERINFO = re.compile(VALUE_PATTERNS[2][1])

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_CONTAINERS = (dict, list)
#: ``key`` then ``=`` or ``:`` in free text (the key may be quoted, as in a repr or JSON).
_KEY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_\-])([A-Za-z_][A-Za-z0-9_\-]*)(['\"]?[ \t]*[:=][ \t]*)")
_OPENERS = {"{": "}", "[": "]", "(": ")"}
_BARE_END = frozenset(" \t\r\n,;&)]}'\"")
_SCHEMES = frozenset({"bearer", "basic", "token", "digest"})


def words(key: str) -> tuple[str, ...]:
    """``"X-Api-Key"`` -> ``("x", "api", "key")``; ``"apiKey"`` -> ``("api", "key")``."""
    return tuple(w for w in _SEPARATORS.split(_CAMEL.sub("_", key).lower()) if w)


def _contains_run(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _quoted_end(text: str, start: int) -> int:
    """The index of the quote closing the string that opens at ``start`` (or the end of ``text``)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return len(text)


def _container_end(text: str, start: int) -> int:
    """The index just past the bracket closing the one at ``start`` (the end of ``text`` if it is cut)."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = _quoted_end(text, i)
        elif c in _OPENERS:
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _bare_end(text: str, start: int, mask: str) -> int:
    i = start
    while i < len(text) and text[i] not in _BARE_END:
        i += 1
    if text[start:i].lower() in _SCHEMES and i < len(text) and text[i] == " ":  # "Authorization: Bearer x"
        if text.startswith(mask, i + 1):  # the token itself was masked already
            return i + 1 + len(mask)
        return _bare_end(text, i + 1, mask)
    return i


class Redactor:
    """Masks sensitive keys' values and secret-looking text, recursively through dicts and lists."""

    def __init__(
        self, keys: Iterable[str] = DEFAULT_REDACT_KEYS, mask: str = DEFAULT_MASK, patterns: Iterable[str] = ()
    ) -> None:
        self.mask = mask
        self._needles = tuple({words(k) for k in keys if words(k)})
        self._values = tuple((literals, re.compile(p)) for literals, p in VALUE_PATTERNS) + tuple(
            ((), re.compile(p)) for p in patterns
        )
        # Payload keys repeat endlessly (the same few field names); remember the verdicts.
        self.is_sensitive = functools.lru_cache(maxsize=8192)(self._is_sensitive)
        self._verdicts: dict[str, bool] = {}  # the same, read inline by _mask_keys (a dict lookup, no call)
        # Every literal of the built-in value patterns, tried with ``in`` before any pattern (most text has
        # none); ``None`` when a configured pattern has no literal, which must always be searched.
        self._literals = (
            tuple(literal for literals, _ in self._values for literal in literals)
            if all(literals for literals, _ in self._values)
            else None
        )

    def _is_sensitive(self, key: str) -> bool:
        haystack = words(key)
        return any(_contains_run(haystack, needle) for needle in self._needles)

    def may_redact(self, text: str) -> bool:
        """False when ``text`` (the value's JSON) certainly holds no sensitive key.

        A sensitive key holds every word of some needle, and JSON leaves letters and digits as they
        are: if, lower-cased, the text misses a word of every needle, there is nothing to walk (most
        payloads). Outside ASCII, ``lower()`` may not be what the key's words were made of: walk.
        """
        return self._keys_in(text, None)

    def _keys_in(self, text: str, lowered: str | None) -> bool:
        if not self._needles:
            return False
        if not text.isascii():
            return True
        if lowered is None:
            lowered = text.lower()
        for needle in self._needles:  # plain loops: generator expressions cost more than the search
            for word in needle:
                if word not in lowered:
                    break
            else:
                return True
        return False

    def redact_text(self, text: str) -> str:
        """``text`` with secret-looking values and the values of sensitive keys masked.

        For free text: exception messages, reprs (``{'token': 'x'}``), log lines, URLs, prompts. A value is
        a quoted string, a bracketed container (cut short: to the end of the text) or a bare word.
        """
        if not text:
            return text
        return self._text(text, values=True)

    def _text(self, text: str, *, values: bool) -> str:
        lowered: str | None = None  # of ``text`` as it is now, for the keys' search
        if values:
            lowered = found = text.lower()
            if self._literals is None or self._holds_literal(found):
                for literals, pattern in self._values:
                    if not literals or any(literal in found for literal in literals):
                        masked = pattern.sub(self._value_mask, text)
                        if masked != text:
                            text, lowered = masked, None
        if not self._needles or not self._keys_in(text, lowered):
            return text
        out: list[str] = []
        done = 0
        for match in _KEY_IN_TEXT.finditer(text):
            start = match.end()
            if match.start() < done or start >= len(text) or not self.is_sensitive(match.group(1)):
                continue
            first = text[start]
            if first in "'\"":
                end = _quoted_end(text, start)
                value_start, value_end = start + 1, end
            elif first in _OPENERS:
                value_start, value_end = start, _container_end(text, start)
            else:
                value_start, value_end = start, _bare_end(text, start, self.mask)
            if value_end <= value_start or text[value_start:value_end] == self.mask:
                continue
            out.append(text[done:value_start])
            out.append(self.mask)
            done = value_end
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)

    def _value_mask(self, match: re.Match[str]) -> str:
        return (match.groupdict().get("keep") or "") + self.mask

    def _holds_literal(self, lowered: str) -> bool:
        """Whether ``lowered`` holds a literal of a built-in value pattern (each match starts with one)."""
        assert self._literals is not None
        for literal in self._literals:  # noqa: SIM110  # a plain loop: any() of a generator costs more
            if literal in lowered:
                return True
        return False

    def _may_match_values(self, text: str, lowered: str) -> bool:
        # In ASCII text (lower() keeps every index) a built-in pattern can only match where one of its
        # literals starts (each pattern begins with its literal): it is tried there alone. A search of the
        # whole text for "\bsk-" cost 5 us on every payload saying "task-".
        anchored = text.isascii()
        if anchored and self._literals is not None and not self._holds_literal(lowered):
            return False
        for literals, pattern in self._values:  # plain loops: generator expressions cost more than the search
            if literals:
                for literal in literals:
                    at = lowered.find(literal)
                    if at < 0:
                        continue
                    if not anchored:
                        if pattern.search(text) is not None:
                            return True
                        break
                    while at >= 0:
                        if pattern.match(text, at) is not None:
                            return True
                        at = lowered.find(literal, at + 1)
            elif pattern.search(text) is not None:
                return True
        return False

    def redact(self, value: Any) -> Any:
        """``value`` with every sensitive key's value and every secret-looking text masked.

        Containers and strings with nothing to mask are returned as they are (not copied); the input is
        never modified.
        """
        if isinstance(value, str):
            return self.redact_text(value)
        if not isinstance(value, _CONTAINERS):
            return value
        strings: list[str] = []
        return self._strings_redacted(self._mask_keys(value, strings), strings)

    def _walk(self, value: Any, values: bool = True) -> Any:
        """``values=False``: the value's JSON holds no secret-looking value, only strings' keys are looked for."""
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            changed = False
            for key, item in value.items():
                if isinstance(key, str) and self.is_sensitive(key):
                    out[key] = self.mask
                    changed = True
                elif isinstance(item, _CONTAINERS):
                    out[key] = new = self._walk(item, values)
                    changed = changed or new is not item
                elif isinstance(item, str):
                    out[key] = new = self._text(item, values=values) if item else item
                    changed = changed or new is not item
                else:
                    out[key] = item
            return out if changed else value
        if isinstance(value, list):
            items = [
                self._walk(item, values) if isinstance(item, _CONTAINERS)
                else self._text(item, values=values) if isinstance(item, str) and item else item
                for item in value
            ]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    def redact_to_json(self, value: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """``(redacted value, its canonical JSON)``: ``redact(value)`` and its JSON, serialised once unless a
        string needs masking.

        Sensitive keys are masked first, in one walk over the containers (only the dicts holding one are
        copied), which also gathers the strings left; then the JSON is made. Only if those strings may hold
        a secret-looking value or a needle's words (``key=value`` in free text) are they walked as
        :meth:`redact` does, and the JSON made again if one changed.
        """
        if not value:
            return value, "{}"
        strings: list[str] = []
        masked = self._mask_keys(value, strings)
        text = canonical_json(masked)
        redacted = self._strings_redacted(masked, strings)
        if redacted is masked:
            return masked, text
        return redacted, canonical_json(redacted)

    def _strings_redacted(self, masked: Any, strings: list[str]) -> Any:
        """``masked`` (a container whose sensitive keys :meth:`_mask_keys` masked, gathering its ``strings``)
        with its strings redacted as :meth:`_walk` does; itself if none needs it.

        The patterns and the free-text keys apply to strings alone: looked for in all of them at once (none
        of the built-in patterns matches across the line break that separates them), and the containers
        walked only if one may match."""
        if not strings:
            return masked
        joined = "\n".join(strings)
        lowered = joined.lower()
        if self._may_match_values(joined, lowered):
            return self._walk(masked, True)
        if (":" in joined or "=" in joined) and self._keys_in(joined, lowered):  # _KEY_IN_TEXT needs one
            return self._walk(masked, False)
        return masked

    def _mask_keys(self, value: Any, strings: list[str]) -> Any:
        """``value`` with the values of sensitive keys masked (containers copied only where one changed);
        appends every non-empty string left, in dicts and lists, to ``strings``."""
        if isinstance(value, dict):
            out: dict[Any, Any] | None = None
            verdicts = self._verdicts
            for key, item in value.items():
                if isinstance(key, str):
                    sensitive = verdicts.get(key)
                    if sensitive is None:
                        sensitive = self.is_sensitive(key)
                        if len(verdicts) < 8192:
                            verdicts[key] = sensitive
                    if sensitive:
                        if out is None:
                            out = dict(value)
                        out[key] = self.mask
                        continue
                if isinstance(item, _CONTAINERS):
                    new = self._mask_keys(item, strings)
                    if new is not item:
                        if out is None:
                            out = dict(value)
                        out[key] = new
                elif isinstance(item, str) and item:
                    strings.append(item)
            return value if out is None else out
        if isinstance(value, list):
            items: list[Any] | None = None
            for i, item in enumerate(value):
                if isinstance(item, _CONTAINERS):
                    new = self._mask_keys(item, strings)
                    if new is not item:
                        if items is None:
                            items = list(value)
                        items[i] = new
                elif isinstance(item, str) and item:
                    strings.append(item)
            return value if items is None else items
        return value


@functools.lru_cache(maxsize=16)
def redactor(keys: tuple[str, ...] = DEFAULT_REDACT_KEYS, patterns: tuple[str, ...] = ()) -> Redactor:
    """The shared :class:`Redactor` of one configuration (built once per process)."""
    return Redactor(keys, DEFAULT_MASK, patterns)


def mask_url_passwords(text: str, mask: str = DEFAULT_MASK) -> str:
    """``scheme://user:pass@host`` -> ``scheme://user:<mask>@host``, for reprs of configuration."""
    return _URL_USERINFO.sub(lambda m: m.group("keep") + mask, text)


def bounded_repr(value: Any, max_chars: int) -> str:
    """``repr(value)``, cut to ``max_chars`` with ``…(N bytes)`` appended (N: the whole repr's size)."""
    text = repr(value)
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


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
