"""Chain keys: the HMAC keys that link events, read from a file the database never sees.

A key file holds one key a line, ``<key id>=<secret>``; blank lines and ``#`` comments are ignored::

    # relaybus chain keys: the last line signs new events, every line verifies
    k2026a=Vq1u0...43 characters of secrets.token_urlsafe(32)...
    k2026b=Hc7Zp...

The **last** key signs every new link; all of them verify, so a key is rotated by adding a line
below it, and retired (never deleted while events carry its id) by leaving it in place. Each event
stores the id of the key that signed it, never the key. A key id is 1 to 32 letters, digits, ``.``,
``_`` or ``-``; ``sha256`` is reserved (it marks an unkeyed link). A secret is at least 32
characters; its UTF-8 bytes are the HMAC key.

Nothing here ever puts a secret into an exception message or a ``repr``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from relaybus.eventstore.errors import ChainKeyError

UNKEYED = "sha256"
"""The key id stored for a link written without a key: plain SHA-256, position included."""

MIN_SECRET_CHARS = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


class ChainKeys:
    """Key id -> secret, in the order given; the last one signs. Its repr names the ids only."""

    __slots__ = ("_secrets", "signing_id")

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        if not secrets:
            raise ChainKeyError("no chain key given")
        for key_id, secret in secrets.items():
            check_key_id(key_id)
            if len(secret) < MIN_SECRET_CHARS:
                raise ChainKeyError(f"chain key {key_id!r} is too short: at least {MIN_SECRET_CHARS} bytes")
        self._secrets = dict(secrets)
        self.signing_id: str = list(secrets)[-1]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    @property
    def signing_secret(self) -> bytes:
        return self._secrets[self.signing_id]

    def secret(self, key_id: str) -> bytes | None:
        """The secret of ``key_id``, or ``None`` if it is not among these keys."""
        return self._secrets.get(key_id)

    def __repr__(self) -> str:
        return f"ChainKeys(ids={self.ids!r}, signing={self.signing_id!r})"

    @classmethod
    def parse(cls, text: str, *, source: str = "the chain key file") -> ChainKeys:
        """Keys from the text of a key file (see the module docstring)."""
        secrets: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, secret = line.partition("=")
            key_id, secret = key_id.strip(), secret.strip()
            if not sep:
                raise ChainKeyError(f"line {number} of {source}: expected <key id>=<secret>")
            if key_id in secrets:
                raise ChainKeyError(f"line {number} of {source}: key id {key_id!r} given twice")
            try:
                check_key_id(key_id)
            except ChainKeyError as exc:
                raise ChainKeyError(f"line {number} of {source}: {exc}") from None
            if len(secret) < MIN_SECRET_CHARS:
                raise ChainKeyError(
                    f"line {number} of {source}: key {key_id!r} is too short (at least {MIN_SECRET_CHARS} characters)"
                )
            secrets[key_id] = secret.encode("utf-8")
        if not secrets:
            raise ChainKeyError(f"{source} holds no key")
        return cls(secrets)

    @classmethod
    def from_file(cls, path: str | Path) -> ChainKeys:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChainKeyError(f"cannot read the chain key file {str(path)!r}: {exc.__class__.__name__}") from None
        return cls.parse(text, source=f"chain key file {str(path)!r}")


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise ChainKeyError(f"bad key id {key_id!r}: 1 to 32 letters, digits, '.', '_' or '-'")
    if key_id == UNKEYED:
        raise ChainKeyError(f"key id {UNKEYED!r} is reserved for unkeyed links")
    return key_id


def new_key_line(key_id: str) -> str:
    """A fresh ``<key id>=<secret>`` line to append to a key file."""
    import secrets

    return f"{check_key_id(key_id)}={secrets.token_urlsafe(32)}"
