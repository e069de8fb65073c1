"""Tamper evidence: ``verify``, ``checkpoint`` and ``chain-key`` (docs/integrity.md).

``verify`` exits 0 when every check holds, an unkeyed log included (it says so: plain SHA-256 holds
only against accidents, not against someone who can write the database); 1 when a link, a position
or the checkpoint does not hold, or the checkpoint's signature does not; 2 when a key or a
checkpoint file cannot be read (bad usage); 3 when the event store cannot be reached.
Problems go to stderr; no message ever holds a key.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from relaybus.cli.output import EXIT_PROBLEM, EXIT_USAGE, emit_json, fail, json_option
from relaybus.cli.services import event_store
from relaybus.settings import Settings, get_settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from relaybus.eventstore import EventStore, NewEvent, VerifyReport


def _trusted_keys(settings: Settings) -> list[Ed25519PublicKey]:
    from relaybus.eventstore import checkpoints

    keys = [checkpoints.parse_public_key(text) for text in settings.checkpoint_public_keys]
    if settings.checkpoint_key_file:
        keys.append(checkpoints.load_private_key(settings.checkpoint_key_file).public_key())
    return keys


def summary(report: VerifyReport) -> str:
    """One line on what held, and how much that is worth."""
    head = f"{report.events_checked} events in {report.streams_checked} streams"
    if report.events_checked == 0:
        return "all chains hold: the log is empty"
    if report.keyed:
        return f"all chains hold: {head}, every link keyed (chain keys: {', '.join(report.key_ids)})"
    plain = report.unkeyed_links + report.legacy_links
    parts = []
    if report.keyed_links:
        parts.append(f"{report.keyed_links} links keyed")
    if report.unkeyed_links:
        parts.append(f"{report.unkeyed_links} written without a chain key")
    if report.legacy_links:
        parts.append(f"{report.legacy_links} from before keyed chains")
    if report.unauthenticated_links:
        parts.append(f"{report.unauthenticated_links} keyed links NOT authenticated: no chain key configured")
    detail = "; ".join(parts)
    if report.keyed_links == 0:
        return (
            f"all chains hold, but the log is UNKEYED: {head} ({detail}); plain SHA-256, which anyone who can "
            "write the database can recompute (set RELAYBUS_CHAIN_KEY_FILE to key new links)"
        )
    return f"all chains hold: {head} ({detail}); {plain} unkeyed links hold against accidents only"


@click.command()
@click.option(
    "--since-checkpoint",
    "checkpoint_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also check the log against this signed checkpoint (relaybus checkpoint).",
)
@click.option(
    "--record/--no-record",
    default=True,
    show_default=True,
    help="Append the outcome to the log (log.verified: the console's integrity page shows the last one).",
)
@json_option
def verify(checkpoint_file: str | None, record: bool, as_json: bool) -> None:
    """Check every link, chain and position (and a checkpoint); exit 1 naming the first problem."""
    from relaybus.eventstore import CheckpointError, checkpoints, verifications

    settings = get_settings()
    checkpoint = signature_problem = None
    if checkpoint_file is not None:
        try:
            checkpoint = checkpoints.read(checkpoint_file)
            signature_problem = checkpoints.signature_problem(checkpoint, _trusted_keys(settings))
        except CheckpointError as exc:
            hint = " (RELAYBUS_CHECKPOINT_PUBLIC_KEYS, RELAYBUS_CHECKPOINT_KEY_FILE)" if "key" in str(exc) else ""
            fail(f"cannot check the checkpoint: {exc}{hint}", EXIT_USAGE, stderr=True)
    with event_store() as store:
        # A checkpoint with a bad signature says nothing about the log: the log is checked without it.
        expected = checkpoint.state if checkpoint is not None and signature_problem is None else None
        started = time.monotonic()
        report = store.verify(expected=expected)
        if record:
            _record(store, verifications.verified_event(report, duration_s=time.monotonic() - started, by="cli",
                                                       checkpoint=checkpoint, signature_problem=signature_problem))
    ok = report.ok and signature_problem is None
    if as_json:
        emit_json(
            {
                **report.model_dump(mode="json"),
                "ok": ok,
                "keyed": report.keyed,
                "checkpoint_signature": signature_problem,
            }
        )
    else:
        if report.first_broken is not None:
            more = f" ({report.broken_links} problems in all)" if report.broken_links > 1 else ""
            click.echo(f"BROKEN: {report.first_broken.describe()}{more}", err=True)
        if signature_problem is not None:
            click.echo(f"CHECKPOINT NOT TRUSTED: {signature_problem}", err=True)
        if report.checkpoint is not None:
            click.echo(f"CHECKPOINT: {report.checkpoint.describe()}", err=True)
        for problem in report.payload_problems:
            click.echo(f"PAYLOAD: {problem.describe()}", err=True)
        if ok:
            click.echo(summary(report))
            if report.payloads_checked:
                click.echo(f"{report.payloads_checked} payloads stored by reference hold their digests")
            if checkpoint is not None:
                click.echo(
                    f"the checkpoint of {checkpoint.created_at} holds: {checkpoint.event_count} events in "
                    f"{checkpoint.stream_count} streams up to position {checkpoint.last_position}"
                )
    if not ok:
        sys.exit(EXIT_PROBLEM)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write it here instead of stdout.")
@click.option(
    "--new-key",
    "new_key",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead: create an Ed25519 signing key in this new file and print its public key.",
)
def checkpoint(out: str | None, new_key: str | None) -> None:
    """Sign the current heads of every stream, the last position and the count, after verifying the log."""
    from relaybus.eventstore import CheckpointError, checkpoints

    settings = get_settings()
    if new_key is not None:
        try:
            key = checkpoints.new_private_key(new_key)
        except CheckpointError as exc:
            fail(str(exc), EXIT_USAGE, stderr=True)
        click.echo(checkpoints.public_key_text(key.public_key()))
        click.echo(
            f"signing key written to {new_key} (mode 600): set RELAYBUS_CHECKPOINT_KEY_FILE to it, and "
            "give verifiers the public key above (RELAYBUS_CHECKPOINT_PUBLIC_KEYS)",
            err=True,
        )
        return
    if not settings.checkpoint_key_file:
        fail(
            "no signing key: set RELAYBUS_CHECKPOINT_KEY_FILE (create one with relaybus checkpoint --new-key FILE)",
            EXIT_USAGE,
            stderr=True,
        )
    try:
        signing_key = checkpoints.load_private_key(settings.checkpoint_key_file)
    except CheckpointError as exc:
        fail(str(exc), EXIT_USAGE, stderr=True)
    with event_store() as store:
        report = store.verify()
    if not report.ok or report.state is None:
        problem = report.first_broken.describe() if report.first_broken else "the log does not verify"
        fail(f"not signing a log that does not verify: {problem}", EXIT_PROBLEM, stderr=True)
    signed = checkpoints.sign(report.state, signing_key)
    if out is None:
        click.echo(signed.to_json(), nl=False)
    else:
        _write_new_version(Path(out), signed.to_json())
    click.echo(
        f"checkpoint: {signed.event_count} events in {signed.stream_count} streams up to position "
        f"{signed.last_position}" + (f", written to {out}" if out else ""),
        err=True,
    )


def _record(store: EventStore, event: NewEvent) -> None:
    """Append a verify's record (``log.verified``, :mod:`eventstore.verifications`); a log this role cannot
    write to is said on stderr, and the check stands."""
    from relaybus.eventstore import EventStoreError

    try:
        store.append([event])
    except EventStoreError as exc:
        click.echo(f"note: {event.type} not recorded in the log ({type(exc).__name__}: {exc})", err=True)


def _write_new_version(path: Path, text: str) -> None:
    """Replace ``path`` whole or not at all."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


@click.command("chain-key")
@click.argument("key_id")
@click.option(
    "--file",
    "key_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The key file (default: RELAYBUS_CHAIN_KEY_FILE).",
)
def chain_key(key_id: str, key_file: str | None) -> None:
    """Add a new chain key KEY_ID to the key file: it links new events from now on (restart writers)."""
    from relaybus.eventstore import ChainKeyError, ChainKeys
    from relaybus.eventstore.keys import new_key_line

    path = key_file or get_settings().chain_key_file
    if not path:
        fail("no key file: pass --file or set RELAYBUS_CHAIN_KEY_FILE", EXIT_USAGE, stderr=True)
    try:
        line = new_key_line(key_id)
        existing = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
        if existing.strip():
            keys = ChainKeys.parse(existing, source=path)
            if key_id in keys.ids:
                raise ChainKeyError(f"key id {key_id!r} is in {path} already")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as file:
            file.write(("" if not existing or existing.endswith("\n") else "\n") + line + "\n")
    except (ChainKeyError, OSError) as exc:
        fail(f"cannot add the chain key: {exc}", EXIT_USAGE, stderr=True)
    click.echo(
        f"chain key {key_id!r} added to {path}: it links new events once writers restart; "
        "keep every older key in the file, so their events keep verifying",
        err=True,
    )


COMMANDS = (verify, checkpoint, chain_key)
