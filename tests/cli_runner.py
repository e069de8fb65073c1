"""Runs ``relaybus`` commands one after another in this process, for the CLI matrix
(tests/integration/test_cli_contract.py): one process per service state pays the imports once.

``python -m tests.cli_runner '<json list of argv lists>'`` prints, as JSON, each command's exit code, stdout,
stderr and the traceback of any exception that escaped the CLI (there must be none). The environment
(``RELAYBUS_*``) is the state: the same for every command of a run, as for an operator's shell.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

from click.testing import CliRunner

from relaybus.cli import main


def run(commands: list[list[str]]) -> list[dict[str, object]]:
    runner = CliRunner()
    results: list[dict[str, object]] = []
    for argv in commands:
        started = time.monotonic()
        result = runner.invoke(main, argv, prog_name="relaybus", catch_exceptions=True)
        escaped = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            escaped = "".join(traceback.format_exception(result.exception))
        results.append({"argv": argv, "code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                        "escaped": escaped, "seconds": round(time.monotonic() - started, 2)})
    return results


if __name__ == "__main__":
    json.dump(run(json.loads(sys.argv[1])), sys.stdout)
