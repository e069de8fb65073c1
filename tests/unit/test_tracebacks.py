"""A failure's frames copied for the pool's parent without their instructions' positions (tasks.runtime.tracebacks)."""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Iterator

import pytest
from billiard import einfo
from billiard.einfo import ExceptionInfo

from relaybus.tasks.runtime import tracebacks


@pytest.fixture
def lean() -> Iterator[None]:
    kept = einfo._Frame.Code
    tracebacks.install()
    try:
        yield
    finally:
        einfo._Frame.Code = kept


def _fails(depth: int) -> None:
    if depth == 0:
        raise ValueError("as asked")
    _fails(depth - 1)


def _failure() -> tuple[ExceptionInfo, traceback.StackSummary, str]:
    try:
        _fails(3)
    except ValueError as error:
        return ExceptionInfo(), traceback.extract_tb(error.__traceback__), "".join(traceback.format_exception(error))
    raise AssertionError("unreachable")


def test_the_copy_keeps_what_billiards_copy_keeps_but_the_positions() -> None:
    code = _fails.__code__
    theirs, ours = einfo._Code(code).__dict__, tracebacks.LeanCode(code).__dict__
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k != "_co_positions"} == {
        k: v for k, v in theirs.items() if k != "_co_positions"}
    assert len(list(ours["_co_positions"])) == len(theirs["_co_positions"]) == len(list(code.co_positions()))


def test_a_lean_copy_formats_in_another_process_with_every_frame_and_line(lean: None) -> None:
    info, real, text = _failure()
    assert isinstance(info.tb.tb_frame.f_code, tracebacks.LeanCode)
    copied = pickle.loads(pickle.dumps(info))  # what the pool's parent gets

    again = traceback.extract_tb(copied.tb)

    assert [(f.filename, f.lineno, f.name, f.line) for f in again] == [
        (f.filename, f.lineno, f.name, f.line) for f in real]
    assert all(f.colno is None for f in again)  # no ^^^ marks: the columns were not copied
    assert copied.traceback == info.traceback == text  # the text is formatted from the real traceback, as before


def test_a_lean_copy_is_smaller_to_send(lean: None) -> None:
    lean_size = len(pickle.dumps(_failure()[0]))
    einfo._Frame.Code = einfo._Code
    assert lean_size < len(pickle.dumps(_failure()[0]))
