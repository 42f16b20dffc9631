"""QoS classes, their priority and DSCP, and DSCP names for config values.

The class of a packet comes either from QoS rules (policy.match over Rule[QosClass]) or from the DSCP it
arrives with (class_of_dscp), per RFC 4594 §3 / RFC 8837 §5 as summarised in conferencing.md.
"""

from __future__ import annotations

import enum


class QosClass(enum.IntEnum):
    """The value is the priority: lower is served first."""

    REALTIME_AUDIO = 0
    INTERACTIVE_VIDEO = 1
    SIGNALLING = 2
    DEFAULT = 3
    BULK = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> QosClass:
        for c in cls:
            if c.label == label:
                return c
        raise ValueError(f"unknown QoS class {label!r}; valid: {', '.join(c.label for c in cls)}")

    def __str__(self) -> str:
        return self.label


# Served by strict priority ahead of everything else (conferencing.md, "DSCP and priority").
REALTIME_CLASSES = frozenset({QosClass.REALTIME_AUDIO, QosClass.INTERACTIVE_VIDEO})

# RFC 2474 class selectors, RFC 2597 AF, RFC 3246 EF, RFC 5865 VOICE-ADMIT, RFC 8622 LE.
DSCP_NAMES: dict[str, int] = {
    **{f"cs{n}": n << 3 for n in range(8)},
    **{f"af{c}{d}": (c << 3) | (d << 1) for c in range(1, 5) for d in range(1, 4)},
    "ef": 46,
    "voice-admit": 44,
    "le": 1,
    "default": 0,
    "be": 0,
}

_CLASS_BY_DSCP = {
    46: QosClass.REALTIME_AUDIO,  # EF: telephony / WebRTC audio (RFC 4594 §4.1, RFC 8837 §5)
    44: QosClass.REALTIME_AUDIO,  # VOICE-ADMIT (RFC 5865)
    34: QosClass.INTERACTIVE_VIDEO,  # AF41/42/43: multimedia conferencing (RFC 4594 §4.3, RFC 8837)
    36: QosClass.INTERACTIVE_VIDEO,
    38: QosClass.INTERACTIVE_VIDEO,
    32: QosClass.INTERACTIVE_VIDEO,  # CS4: real-time interactive (RFC 4594 §4.4)
    40: QosClass.SIGNALLING,  # CS5: signalling (RFC 4594 §4.2)
    24: QosClass.SIGNALLING,  # CS3: the older signalling code point (RFC 4594 §3.2 note)
    8: QosClass.BULK,  # CS1: low-priority data (RFC 4594 §4.10)
    1: QosClass.BULK,  # LE: lower effort (RFC 8622)
}
# Indexed by the 6-bit DSCP (tos >> 2) on the data path: one tuple index per packet.
DSCP_CLASS: tuple[QosClass, ...] = tuple(_CLASS_BY_DSCP.get(d, QosClass.DEFAULT) for d in range(64))

_DSCP_OF_CLASS = {
    QosClass.REALTIME_AUDIO: 46,  # EF
    QosClass.INTERACTIVE_VIDEO: 34,  # AF41
    QosClass.SIGNALLING: 40,  # CS5
    QosClass.DEFAULT: 0,
    QosClass.BULK: 8,  # CS1
}


def class_of_dscp(dscp: int) -> QosClass:
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be 0..63, got {dscp}")
    return DSCP_CLASS[dscp]


def dscp_of_class(qos_class: QosClass) -> int:
    return _DSCP_OF_CLASS[QosClass(qos_class)]


def dscp_from_label(text: str) -> int:
    """A DSCP from a config value: a name (ef, af11..af43, cs0..cs7, le, voice-admit, default, be; any
    case) or a decimal number 0..63."""
    key = str(text).strip().lower()
    if key in DSCP_NAMES:
        return DSCP_NAMES[key]
    if key.isdecimal() and key.isascii() and int(key) <= 63:
        return int(key)
    raise ValueError(f"bad DSCP {text!r}: need 0..63 or one of {', '.join(DSCP_NAMES)}")
