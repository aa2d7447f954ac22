"""Checks a site makes of a decoded record before its features: whose it is, and whether it was seen."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RecordGuard:
    """The checks a site makes of a decoded record before its features: it names this site, and its
    id was not seen among the last ``window`` ids (a replayed or duplicated record is not learnt twice)."""

    def __init__(self, site_id: str, site_field: str | None, id_field: str | None, window: int) -> None:
        self.site_id = site_id
        self.site_field = site_field
        self.id_field = id_field
        self.window = window
        self._seen: OrderedDict[object, None] = OrderedDict()

    def check(self, rec: dict[str, Any]) -> tuple[str, str] | None:
        if self.site_field is not None and rec.get(self.site_field) != self.site_id:
            return "wrong_site", f"{self.site_field} is {rec.get(self.site_field)!r}, this site is {self.site_id!r}"
        if self.id_field is not None:
            key = rec.get(self.id_field)
            if key in self._seen:
                return "duplicate", f"{self.id_field} {key!r} was seen among the last {self.window} records"
            self._seen[key] = None
            if len(self._seen) > self.window:
                self._seen.popitem(last=False)
        return None
