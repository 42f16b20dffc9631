"""Anti-replay window (RFC 4303 §3.4.3, RFC 6479) against a naive model: a set of seen numbers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.esp.replay import ReplayWindow


class NaiveWindow:
    def __init__(self, size: int) -> None:
        self.size, self.seen, self.highest = size, set(), 0

    def accept(self, seq: int) -> bool:
        if seq == 0 or seq in self.seen or seq + self.size <= self.highest:
            return False
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        return True


def accept(window: ReplayWindow, seq: int) -> bool:
    if not window.check(seq):
        return False
    window.update(seq)
    return True


def test_in_order_then_duplicate() -> None:
    w = ReplayWindow(64)
    assert all(accept(w, s) for s in range(1, 200))
    assert not accept(w, 199)
    assert not accept(w, 150)


def test_zero_is_never_valid() -> None:
    assert not ReplayWindow(64).check(0)


def test_left_edge() -> None:
    w = ReplayWindow(128)
    assert accept(w, 1000)
    assert accept(w, 1000 - 127)  # last number inside the window
    assert not accept(w, 1000 - 128)  # first number left of it


def test_big_jump_clears_stale_bits() -> None:
    w = ReplayWindow(64)
    assert accept(w, 5)
    assert accept(w, 5 + 64 * 10)  # slides by more than the whole bitmap
    # Numbers in the new window share bitmap slots with old ones; they must read as unseen.
    assert accept(w, 5 + 64 * 10 - 63)


def test_check_does_not_move_window() -> None:
    w = ReplayWindow(64)
    assert w.check(10_000)
    assert w.highest == 0
    assert accept(w, 1)


@pytest.mark.parametrize("size", [0, 63, 100, -64])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([64, 128, 256, 8192]),
    seqs=st.lists(st.integers(min_value=0, max_value=3000), max_size=400),
)
def test_matches_naive_model(size: int, seqs: list[int]) -> None:
    w, model = ReplayWindow(size), NaiveWindow(size)
    for seq in seqs:
        assert accept(w, seq) == model.accept(seq), seq


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**32 - 1), max_size=200))
def test_matches_naive_model_full_range(seqs: list[int]) -> None:
    w, model = ReplayWindow(8192), NaiveWindow(8192)
    for seq in seqs:
        assert accept(w, seq) == model.accept(seq)
