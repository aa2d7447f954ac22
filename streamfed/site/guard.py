"""Checks a site makes of a decoded record before its features: whose it is, and whether it was seen."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamfed.serde.columnar import Column


class RecordGuard:
    """The checks a site makes of a decoded record: it names this site, and its id is not among the
    last ``window`` ids the site learnt (a replayed or duplicated record is not learnt twice). Only
    learnt records are remembered: a record refused for its features may be sent again, corrected,
    under its id."""

    def __init__(self, site_id: str, site_field: str | None, id_field: str | None, window: int) -> None:
        self.site_id = site_id
        self.site_field = site_field
        self.id_field = id_field
        self.window = window
        self._seen: OrderedDict[object, None] = OrderedDict()

    def check(self, rec: dict[str, Any]) -> tuple[str, str] | None:
        """Why ``rec`` must not be learnt (reason, detail), or None."""
        if self.site_field is not None and rec.get(self.site_field) != self.site_id:
            return "wrong_site", f"{self.site_field} is {rec.get(self.site_field)!r}, this site is {self.site_id!r}"
        if self.id_field is not None and rec.get(self.id_field) in self._seen:
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
            keys = ids.tolist() if isinstance(ids, np.ndarray) else ids
            try:
                if len(set(keys)) != n or not self._seen.keys().isdisjoint(keys):
                    return False
            except TypeError:  # an unhashable id: the per-record path says what it is
                return False
        return True

    def remember(self, ids: Column) -> None:
        """Remember the distinct ids of records about to be learnt, in order (after :meth:`clean`)."""
        if self.id_field is None:
            return
        seen = self._seen
        seen.update(dict.fromkeys(ids.tolist() if isinstance(ids, np.ndarray) else ids))
        for _ in range(len(seen) - self.window):
            seen.popitem(last=False)

    def learnt(self, records: list[dict[str, Any]]) -> list[str | None]:
        """Remember the ids of ``records`` (about to be learnt, in order); for each, None, or why it is a
        duplicate of an earlier one of them (it must then not be learnt)."""
        if self.id_field is None:
            return [None] * len(records)
        out: list[str | None] = []
        for rec in records:
            key = rec.get(self.id_field)
            if key in self._seen:
                out.append(self._duplicate(key))
                continue
            self._seen[key] = None
            if len(self._seen) > self.window:
                self._seen.popitem(last=False)
            out.append(None)
        return out
