"""DLQ records of tenants in dedicated lanes, counted from their DLQ topics' end offsets. Pure.

The shared lane's processor runs in the router's worker and reports every DLQ record it
publishes (`Forwarder.count_dlq`); a lane worker is another process. Drain-first cuts mean that
only one lane processes a tenant's records at a time, so while a tenant is in a dedicated lane
every record added to its DLQ topic is the lane worker's: the router counts the growth of the
topic's end offset into the tenant's volume windows.

`LaneDlqCounts` keeps, per watched tenant, the end offset it last counted to. A cut's
completion gives exact bounds (`start`, `stop`: read under the forwarding lock, before any
record of the tenant reaches its new lane); a tenant found in a dedicated lane otherwise (a
restore) counts from its first read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class LaneDlqCounts:
    """tenant -> its DLQ topic's end offset at the last count (None: not read yet)."""

    __slots__ = ("_ends",)

    def __init__(self) -> None:
        self._ends: dict[str, int | None] = {}

    def watch(self, tenants: Iterable[str]) -> list[str]:
        """Watch exactly `tenants` (those in a dedicated lane now); returns them."""
        wanted = set(tenants)
        self._ends = {tenant: self._ends.get(tenant) for tenant in wanted}
        return sorted(wanted)

    def start(self, tenant: str, end: int) -> None:
        """The tenant enters a dedicated lane; its DLQ topic ends at `end` before any record
        reaches the lane."""
        self._ends[tenant] = end

    def stop(self, tenant: str, end: int | None) -> int:
        """The tenant left its dedicated lane, which has emitted all of its records: the DLQ
        records since the last count (0 if `end`, or the last count, is unknown)."""
        last = self._ends.pop(tenant, None)
        return _growth(last, end)

    def counted(self, ends: Mapping[str, int]) -> dict[str, int]:
        """tenant -> DLQ records since the last count, for the watched tenants in `ends`."""
        grown = {}
        for tenant, end in ends.items():
            if tenant not in self._ends:
                continue
            added = _growth(self._ends[tenant], end)
            self._ends[tenant] = end
            if added:
                grown[tenant] = added
        return grown


def _growth(last: int | None, end: int | None) -> int:
    # A topic that shrank was re-created (the tenant deleted and onboarded again): count afresh.
    if last is None or end is None or end < last:
        return 0
    return end - last
