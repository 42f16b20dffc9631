"""An E-model estimate of a call's quality from what a passive observer sees: ITU-T G.107 reduced to the
terms RFC 3611 §4.7.5's VoIP metrics use (R = 93.2 - Id - Ie_eff), with G.107 §B.4's R -> MOS mapping.

A gateway sees loss and jitter but not the mouth-to-ear delay, so the delay term is taken from what the
jitter implies for the receiver: a jitter buffer of twice the interarrival jitter on top of one 20 ms
packet (PACKET_MS), which is what most endpoints do. The codec is not known either (dynamic payload
types), so the impairments are G.711's without concealment (G.113 Appendix I: Ie 0, Bpl 4.3): the
conservative end, under which 1 % random loss gives MOS ~3.8 and 5 % ~2.1.
"""

from __future__ import annotations

R0 = 93.2  # G.107's default basic signal-to-noise ratio less the default simultaneous impairments
IE = 0.0  # equipment impairment of the codec (G.711)
BPL = 4.3  # packet-loss robustness (G.711 without packet loss concealment, G.113 Appendix I)
PACKET_MS = 20.0  # one packet of audio, the buffering every receiver adds at least
MOS_MIN, MOS_MAX = 1.0, 4.5


def delay_impairment(one_way_ms: float) -> float:
    """Id of G.107 in the simplified form of Cole and Rosenbluth (2001): 0.024 per ms, and 0.11 per ms
    more beyond 177.3 ms, where conversation starts to suffer."""
    excess = one_way_ms - 177.3
    return 0.024 * one_way_ms + (0.11 * excess if excess > 0 else 0.0)


def loss_impairment(loss_fraction: float, burst_ratio: float = 1.0) -> float:
    """Ie_eff of G.107 §7.3 (random loss when burst_ratio is 1)."""
    ppl = min(max(loss_fraction, 0.0), 1.0) * 100.0
    return IE + (95.0 - IE) * ppl / (ppl / burst_ratio + BPL)


def r_factor(loss_fraction: float, jitter_ms: float) -> float:
    """The transmission rating R (0-100) for this loss and interarrival jitter."""
    delay = PACKET_MS + 2.0 * max(jitter_ms, 0.0)
    return R0 - delay_impairment(delay) - loss_impairment(loss_fraction)


def mos(r: float) -> float:
    """G.107 Annex B: the estimated mean opinion score (1-4.5) for a rating R."""
    if r <= 0:
        return MOS_MIN
    if r >= 100:
        return MOS_MAX
    return MOS_MIN + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
