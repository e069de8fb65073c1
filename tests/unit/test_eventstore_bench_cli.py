"""``python -m bench.eventstore_bench`` parses its command line: ``--help`` prints usage and exits at once.

It used to read ``sys.argv`` by hand, so ``--help`` was ignored and started the full benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_help_prints_usage_and_exits_without_benchmarking() -> None:
    # A benchmark would run for minutes: the timeout fails the test long before (help takes about a second).
    out = subprocess.run(
        [sys.executable, "-m", "bench.eventstore_bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out
    assert out.stdout.startswith("usage: python -m bench.eventstore_bench"), out.stdout
    for option in ("--quick", "--stores", "--rounds"):
        assert option in out.stdout, out.stdout
    assert "relaybus_sqlite_keyed" in out.stdout  # the store names are listed
    assert not any(line.startswith("store ") for line in out.stdout.splitlines())  # no table: nothing measured


def test_the_options_it_reads() -> None:
    from bench.eventstore_bench import ROUNDS, parse_args

    defaults = parse_args([])
    assert (defaults.quick, defaults.stores, defaults.rounds) == (False, None, ROUNDS)
    args = parse_args(["--quick", "--stores", "relaybus_sqlite,eventsourcing_sqlite", "--rounds", "5"])
    assert (args.quick, args.stores, args.rounds) == (True, ("relaybus_sqlite", "eventsourcing_sqlite"), 5)


@pytest.mark.parametrize("argv", [["--stores", "relaybus_sqlit"], ["--rounds", "0"], ["--quik"]])
def test_a_mistyped_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from bench.eventstore_bench import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
