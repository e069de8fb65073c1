"""Checkpoints: the log's state, signed with Ed25519, to keep where the database's writers cannot reach.

A checkpoint commits to the log up to its last position: how many events and streams it held, and a
digest of every stream's head (``[stream_id, version, hash]``, :func:`integrity.heads_digest`).
Each head's hash covers its stream's whole history, so the digest covers every event below the
checkpoint: a later verify against it finds a truncated tail, a deleted stream, and a history
rewritten and re-chained, even in an unkeyed log (:func:`integrity.compare`). It is a small JSON
document (:class:`Checkpoint`), to be kept elsewhere: a file, a ticket, a transparency log.

Signing keys are PEM files (PKCS#8, unencrypted: protect the file); verifiers need only the public
key, as base64 of its 32 raw bytes. The signature covers the canonical JSON of every other field.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from relaybus.eventstore.errors import CheckpointError
from relaybus.eventstore.hashing import canonical_json, format_time
from relaybus.eventstore.integrity import LogState

FORMAT: Literal["relaybus.checkpoint.v1"] = "relaybus.checkpoint.v1"


class Checkpoint(BaseModel):
    """A signed :class:`~.integrity.LogState`: the file ``relaybus checkpoint`` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["relaybus.checkpoint.v1"] = FORMAT
    created_at: str
    last_position: int
    event_count: int
    stream_count: int
    heads_sha256: str
    public_key: str
    """The signer's public key (base64, raw 32 bytes); a verifier trusts only keys it is configured with."""
    signature: str
    """Ed25519 over :meth:`signed_bytes`, base64."""

    @property
    def state(self) -> LogState:
        return LogState(
            last_position=self.last_position,
            event_count=self.event_count,
            stream_count=self.stream_count,
            heads_sha256=self.heads_sha256,
        )

    def signed_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", exclude={"signature"})).encode()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def sign(state: LogState, key: Ed25519PrivateKey, *, now: datetime | None = None) -> Checkpoint:
    unsigned = Checkpoint(
        created_at=format_time(now or datetime.now(UTC)),
        public_key=public_key_text(key.public_key()),
        signature="",
        **state.model_dump(),
    )
    signature = key.sign(unsigned.signed_bytes())
    return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def signature_problem(checkpoint: Checkpoint, trusted: Iterable[Ed25519PublicKey]) -> str | None:
    """Why ``checkpoint`` is not to be believed, or ``None`` when a trusted key signed exactly it."""
    keys = {public_key_text(key): key for key in trusted}
    if not keys:
        raise CheckpointError("no checkpoint public key configured to check a checkpoint's signature")
    key = keys.get(checkpoint.public_key)
    if key is None:
        return f"the checkpoint is signed by a key that is not trusted here ({checkpoint.public_key})"
    try:
        key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.signed_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        return "the checkpoint's signature does not match its contents (edited, or not a checkpoint of this key)"
    return None


def read(path: str | Path) -> Checkpoint:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {str(path)!r}: {exc}") from None
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "the checkpoint") -> Checkpoint:
    try:
        return Checkpoint.model_validate_json(text)
    except ValidationError as exc:
        raise CheckpointError(f"{source} is not a relaybus checkpoint: {exc.error_count()} problems") from None


# -- keys ---------------------------------------------------------------------------------------------------


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise CheckpointError(f"not an Ed25519 public key (base64 of 32 bytes): {text.strip()!r}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The signing key in a PEM file. Errors name the file, never its contents."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        error = exc.__class__.__name__
        raise CheckpointError(f"cannot read the checkpoint signing key {str(path)!r}: {error}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CheckpointError(f"{str(path)!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{str(path)!r} holds a {key.__class__.__name__}, not an Ed25519 key")
    return key


def new_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Create a signing key in a new file, readable by its owner only; refuses to overwrite one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CheckpointError(f"{str(path)!r} exists already: not overwriting a key") from None
    except OSError as exc:
        raise CheckpointError(f"cannot create {str(path)!r}: {exc}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return key
