"""The saga benchmark looks for ended sagas as often for relaybus as for celery-saga: the looking loads the machine
both measure on (bench.saga_peer never imports relaybus, so the two modules each spell the intervals out)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _constants(module: str) -> dict[str, float]:
    tree = ast.parse((ROOT / "bench" / f"{module}.py").read_text())
    return {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id.startswith("POLL_")
    }


def test_both_drivers_poll_at_the_same_intervals() -> None:
    ours, peer = _constants("saga_bench"), _constants("saga_peer")
    assert set(ours) == {"POLL_ALONE_S", "POLL_LOADED_S"}
    assert ours == peer
