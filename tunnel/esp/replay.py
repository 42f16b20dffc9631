"""Anti-replay window, RFC 4303 §3.4.3, kept as an RFC 6479 bitmap.

RFC 6479 keeps the window in fixed-size blocks and clears whole blocks as the window slides, so an
advance costs at most one pass over the blocks it skips instead of a shift of the whole bitmap. One
spare block lets the window slide by a whole block at a time: the accepted span is `size` to
`size + 63` sequence numbers, which RFC 6479 §3 allows.
"""

from __future__ import annotations

BLOCK_BITS = 64
_BLOCK_SHIFT = 6
_BIT_MASK = BLOCK_BITS - 1

DEFAULT_WINDOW = 8192


class ReplayWindow:
    __slots__ = ("size", "highest", "_blocks", "_nblocks")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < BLOCK_BITS or size % BLOCK_BITS:
            raise ValueError(f"replay window must be a positive multiple of {BLOCK_BITS}, got {size}")
        self.size = size
        self.highest = 0  # highest authenticated sequence number seen; 0 = none yet
        self._nblocks = size // BLOCK_BITS + 1
        self._blocks = [0] * self._nblocks

    def check(self, seq: int) -> bool:
        """True when seq is new and inside the window. Cheap, so it runs before the ICV check."""
        if seq == 0:
            return False  # RFC 4303 §3.3.3: the first packet sent carries 1
        highest = self.highest
        if seq > highest:
            return True
        if seq + self.size <= highest:
            return False  # too old: left of the window
        return not (self._blocks[(seq >> _BLOCK_SHIFT) % self._nblocks] >> (seq & _BIT_MASK)) & 1

    def skip_to(self, seq: int) -> None:
        """Count every sequence number up to seq as received (an SA taken over from the other gateway of
        an HA pair, which saw them: their replays are refused here too)."""
        if seq > self.highest:
            self.highest = seq
            self._blocks = [(1 << BLOCK_BITS) - 1] * self._nblocks

    def update(self, seq: int) -> None:
        """Mark seq as received. Call only after the ICV verified (RFC 4303 §3.4.3) and check() passed."""
        index = seq >> _BLOCK_SHIFT
        if seq > self.highest:
            current = self.highest >> _BLOCK_SHIFT
            skipped = min(index - current, self._nblocks)
            blocks = self._blocks
            for i in range(1, skipped + 1):  # clear the blocks the window slides over (RFC 6479 §3)
                blocks[(current + i) % self._nblocks] = 0
            self.highest = seq
        self._blocks[index % self._nblocks] |= 1 << (seq & _BIT_MASK)
