"""``relaybus web``: the operations console (:mod:`relaybus.web`), served by uvicorn.

Credentials: ``RELAYBUS_WEB_TOKEN`` (or ``--token-file``, for a secret mounted as a file) and/or
``RELAYBUS_WEB_BASIC_AUTH=user:password``. Without any, it starts only on 127.0.0.1 with
``--insecure-localhost`` (exit 2 otherwise, naming the option).
"""

from __future__ import annotations

from pathlib import Path

import click

from relaybus.cli.services import celery_app, event_store

LOCALHOST = "127.0.0.1"


@click.command()
@click.option("--host", default=LOCALHOST, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option("--read-only", is_flag=True, help="No actions: the pages show no buttons and every POST is refused.")
@click.option("--insecure-localhost", is_flag=True,
              help=f"Run without credentials; only with --host {LOCALHOST}.")
@click.option("--token", envvar="RELAYBUS_WEB_TOKEN", default=None, show_envvar=True, hidden=True,
              help="The token (from the environment: a command line is visible to every user of the machine).")
@click.option("--token-file", envvar="RELAYBUS_WEB_TOKEN_FILE", show_envvar=True, default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A file holding the token.")
@click.option("--basic-auth", envvar="RELAYBUS_WEB_BASIC_AUTH", default=None, show_envvar=True, hidden=True,
              help="user:password for basic auth (from the environment, as the token).")
def web(host: str, port: int, read_only: bool, insecure_localhost: bool, token: str | None,
        token_file: Path | None, basic_auth: str | None) -> None:
    """Serve the operations console: workflows, dead letters, queues, agents, and /metrics."""
    try:
        import uvicorn

        from relaybus.web import WebAuth, create_web_app
    except ImportError as exc:  # the web extra is not installed
        raise click.UsageError(f"the console needs the web extra: pip install 'relaybus[web]' ({exc.name})") from exc
    if token_file is not None:
        token = token_file.read_text().strip() or None
    user, password = [*basic_auth.split(":", 1), ""][:2] if basic_auth else (None, None)
    if basic_auth is not None and not (user and password):
        raise click.BadParameter("must be user:password", param_hint="RELAYBUS_WEB_BASIC_AUTH")
    credentials = bool(token or basic_auth)
    if insecure_localhost and host != LOCALHOST:
        raise click.BadParameter(f"--insecure-localhost serves {LOCALHOST} only", param_hint="--host")
    if not credentials and not insecure_localhost:
        raise click.UsageError(
            "the console needs credentials: set RELAYBUS_WEB_TOKEN (or --token-file, or RELAYBUS_WEB_BASIC_AUTH="
            f"user:password), or run on {LOCALHOST} with --insecure-localhost"
        )
    auth = WebAuth(token=token, basic_user=user, basic_password=password, read_only=read_only,
                   insecure=not credentials)
    app = celery_app()
    with event_store() as store:
        click.echo(f"relaybus console on http://{host}:{port}/ ({'read-only' if read_only else 'read-write'}"
                   f"{', NO AUTHENTICATION' if auth.insecure else ''})", err=True)
        uvicorn.run(create_web_app(app, store, auth), host=host, port=port, log_level="warning",
                    proxy_headers=False)


COMMANDS = (web,)
