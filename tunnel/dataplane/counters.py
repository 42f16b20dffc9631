"""The data path's counters: plain integers on the packet path, summed across workers and read by the
metrics exporter at scrape time."""

from __future__ import annotations

from tunnel.esp.drops import DropReason

_DROP_SLOTS = max(DropReason) + 1


class Counters:
    """Plain integers read at scrape time; nothing on the packet path allocates for them."""

    # Events that are not drops: packets fragmented before encryption (DF clear, too big for the
    # tunnel), TCP SYNs whose MSS was lowered, ICMP "too big" errors sent back to a sender.
    SCALARS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "keepalives", "fragmented", "mss_clamped",
               "icmp_too_big")
    __slots__ = (*SCALARS, "drops")

    def __init__(self) -> None:
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = self.keepalives = 0
        self.fragmented = self.mss_clamped = self.icmp_too_big = 0
        self.drops = [0] * _DROP_SLOTS

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1

    def drops_by_reason(self) -> dict[str, int]:
        return {reason.label: self.drops[reason] for reason in DropReason if self.drops[reason]}

    def as_dict(self) -> dict[str, object]:
        return {**{name: getattr(self, name) for name in self.SCALARS}, "drops": self.drops_by_reason()}

    def add(self, part: Counters) -> None:
        """Sum another set into this one (a worker's into the gateway's totals)."""
        for name in self.SCALARS:
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for i, n in enumerate(part.drops):
            self.drops[i] += n

    def values(self) -> tuple[int | list[int], ...]:
        """Plain values, as a worker reports them (load() takes them back)."""
        return (*(getattr(self, name) for name in self.SCALARS), list(self.drops))

    def load(self, values: tuple[int | list[int], ...]) -> None:
        for name, value in zip(self.SCALARS, values[:-1]):
            setattr(self, name, value)
        drops = values[-1]
        assert isinstance(drops, list)
        self.drops[:len(drops)] = drops
