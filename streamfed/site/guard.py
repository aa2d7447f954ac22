"""Checks a site makes of a decoded record before its features: whose it is, and whether it was seen."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

import numpy as np

from streamfed.serde.columnar import Column


class RecordGuard:
    """The checks a site makes of a decoded record: it names this site, and its id is not among the
    last ``window`` ids the site learnt (a replayed or duplicated record is not learnt twice). Only
    learnt records are remembered: a record refused for its features may be sent again, corrected,
    under its id.

    Each remembered id maps to its number among the learnt records, in the order they were learnt;
    ids older than the window are dropped in bulk once there are twice as many as the window
    (dropping one a record cost about 1 us a record, more than the rest of the guard).
    """

    def __init__(self, site_id: str, site_field: str | None, id_field: str | None, window: int) -> None:
        self.site_id = site_id
        self.site_field = site_field
        self.id_field = id_field
        self.window = window
        self._seen: dict[object, int] = {}  # id -> its number among learnt records; in that order
        self._learnt = 0  # records remembered so far

    def _recent(self, key: object) -> bool:
        """Whether ``key`` is among the ids of the last ``window`` learnt records."""
        at = self._seen.get(key)
        return at is not None and self._learnt - at <= self.window

    def check(self, rec: dict[str, Any]) -> tuple[str, str] | None:
        """Why ``rec`` must not be learnt (reason, detail), or None."""
        if self.site_field is not None and rec.get(self.site_field) != self.site_id:
            return "wrong_site", f"{self.site_field} is {rec.get(self.site_field)!r}, this site is {self.site_id!r}"
        if self.id_field is not None and self._recent(rec.get(self.id_field)):
            return "duplicate", self._duplicate(rec.get(self.id_field))
        return None

    def _duplicate(self, key: object) -> str:
        return f"{self.id_field} {key!r} was learnt among the last {self.window} records"

    def clean(self, columns: Mapping[str, Column], n: int) -> bool:
        """Whether :meth:`check` and :meth:`learnt` would pass every one of ``n`` records given as
        columns (field name -> one value per record): all name this site, and their ids are distinct
        and none was learnt among the last ``window``. False says nothing of which record fails: ask
        :meth:`check` and :meth:`learnt` of each."""
        if self.site_field is not None:
            sites = columns.get(self.site_field)
            if not isinstance(sites, list) or sites.count(self.site_id) != n:
                return False
        if self.id_field is not None:
            ids = columns.get(self.id_field)
            if ids is None:
                return False
            try:
                keys = set(ids.tolist() if isinstance(ids, np.ndarray) else ids)
            except TypeError:  # an unhashable id: the per-record path says what it is
                return False
            if len(keys) != n or any(map(self._recent, self._seen.keys() & keys)):
                return False
        return True

    def remember(self, columns: Mapping[str, Column]) -> None:
        """Remember the ids of a batch given as columns, about to be learnt, in order (after
        :meth:`clean` said yes of it)."""
        if self.id_field is None:
            return
        ids = columns[self.id_field]
        keys = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        seen = self._seen
        for old in seen.keys() & set(keys):  # learnt before the window: remembered again, as new
            del seen[old]
        seen.update(zip(keys, range(self._learnt, self._learnt + len(keys)), strict=True))
        self._learnt += len(keys)
        self._forget()

    def learnt(self, records: list[dict[str, Any]]) -> list[str | None]:
        """Remember the ids of ``records`` (about to be learnt, in order); for each, None, or why it is a
        duplicate of an earlier one of them (it must then not be learnt)."""
        if self.id_field is None:
            return [None] * len(records)
        out: list[str | None] = []
        seen = self._seen
        for rec in records:
            key = rec.get(self.id_field)
            if self._recent(key):
                out.append(self._duplicate(key))
                continue
            seen.pop(key, None)
            seen[key] = self._learnt
            self._learnt += 1
            out.append(None)
        self._forget()
        return out

    def _forget(self) -> None:
        """Drop the ids older than the window once there are twice as many as it."""
        if len(self._seen) > 2 * self.window:
            keep = islice(self._seen.items(), len(self._seen) - self.window, None)
            self._seen = dict(keep)
