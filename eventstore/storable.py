"""Values the databases cannot hold, stored in an escaped, lossless form instead of failing the append.

Canonical JSON has no NaN or Infinity, and UTF-8 (hence SQLite's and PostgreSQL's text) has no lone
surrogates, which Python strings may carry (``"\\udc80"`` from a ``surrogateescape`` decode, or an
exception message quoting a broken byte string). A record holding one is not dropped: each such value
is replaced by a marked object that says what it was, and :func:`restore` gives the original back::

    float("nan")   ->  {"$float": "nan"}            ("inf", "-inf")
    "a\\udc80b"     ->  {"$unicode_escape": "a\\\\udc80b"}   (str.encode("unicode_escape"))

A NUL character needs nothing: JSON writes it as ``\\u0000``, which both databases keep in a JSON
column (PostgreSQL refuses it only in ``jsonb`` and in text columns, which hold ids, not values).
Dict keys are escaped the same way, as ``"$unicode_escape:<escaped>"``.
"""

from __future__ import annotations

import math
from typing import Any

FLOAT_MARK = "$float"
TEXT_MARK = "$unicode_escape"
_KEY_PREFIX = TEXT_MARK + ":"


def _text_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_text(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def storable(value: Any) -> Any:
    """``value`` with every non-finite float and every string that is not valid UTF-8 replaced by its
    marked form; containers are copied only where something changed."""
    if isinstance(value, float):
        return value if math.isfinite(value) else {FLOAT_MARK: repr(value)}
    if isinstance(value, str):
        return value if _text_ok(value) else {TEXT_MARK: _escape_text(value)}
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = key if not isinstance(key, str) or _text_ok(key) else _KEY_PREFIX + _escape_text(key)
            new_item = storable(item)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [storable(item) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def restore(value: Any) -> Any:
    """The inverse of :func:`storable`: marked values back to the float or string they stood for."""
    if isinstance(value, dict):
        if len(value) == 1:
            if isinstance(value.get(FLOAT_MARK), str):
                return float(value[FLOAT_MARK])
            if isinstance(value.get(TEXT_MARK), str):
                return value[TEXT_MARK].encode("ascii").decode("unicode_escape")
        return {
            (key[len(_KEY_PREFIX):].encode("ascii").decode("unicode_escape")
             if isinstance(key, str) and key.startswith(_KEY_PREFIX) else key): restore(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [restore(item) for item in value]
    return value


def needs_escaping(text: str) -> bool:
    """Whether canonical JSON ``text`` holds a lone surrogate (it cannot be stored as UTF-8)."""
    return not _text_ok(text)
