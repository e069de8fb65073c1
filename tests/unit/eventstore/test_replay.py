from __future__ import annotations

from relaybus.eventstore.replay import diff_paths


def test_diff_paths_name_where_two_values_differ() -> None:
    assert diff_paths({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert diff_paths({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 3], "c": None}) == ["$.a", "$.b[1]", "$.c"]
    assert diff_paths([1, 2], [1, 2, 3]) == ["$"]
    assert diff_paths(1, 1.0) == ["$"]  # an int became a float: that is a change of output
    assert len(diff_paths({str(i): i for i in range(50)}, {}, limit=5)) == 5
