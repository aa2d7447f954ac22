"""RecordGuard remembers exactly the ids of the last ``window`` learnt records, by either path."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest

from streamfed.site.guard import RecordGuard


class Reference:
    """The rule, written plainly: the last ``window`` learnt ids, the oldest dropped one by one."""

    def __init__(self, window: int) -> None:
        self.window, self.seen = window, OrderedDict()

    def learn(self, key: int) -> bool:
        if key in self.seen:
            return False
        self.seen[key] = None
        if len(self.seen) > self.window:
            self.seen.popitem(last=False)
        return True


@pytest.mark.parametrize("window", [1, 3, 10, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_guard_follows_the_last_window_ids_by_records_and_by_columns(window: int, seed: int) -> None:
    rnd = random.Random(seed)
    ref = Reference(window)
    guard = RecordGuard("s", "site", "id", window)
    by_columns = 0
    for _ in range(300):
        batch = [rnd.randrange(4 * window + 5) for _ in range(rnd.randint(1, 2 * window + 2))]
        expected = [ref.learn(k) for k in batch]
        columns = {"site": ["s"] * len(batch), "id": np.array(batch)}
        if guard.clean(columns, len(batch)):
            assert all(expected)
            guard.remember(columns)
            by_columns += 1
            continue
        got = []  # not clean (perhaps only a repeat inside the batch): record by record
        for k in batch:
            rec = {"site": "s", "id": k}
            got.append(guard.check(rec) is None and guard.learnt([rec]) == [None])
        assert got == expected
    assert by_columns > 0
    assert len(guard._seen) <= 2 * window + 2 * window + 2


def test_a_record_of_another_site_or_without_an_id_is_not_clean() -> None:
    guard = RecordGuard("s", "site", "id", 10)
    assert guard.clean({"site": ["s", "s"], "id": ["a", "b"]}, 2)
    assert not guard.clean({"site": ["s", "t"], "id": ["a", "b"]}, 2)
    assert not guard.clean({"site": ["s", "s"]}, 2)
    assert not guard.clean({"site": ["s", "s"], "id": ["a", "a"]}, 2)
    assert not guard.clean({"site": ["s", "s"], "id": [["a"], ["b"]]}, 2)
