"""Named services as data, so a rule can say `services: [sip, rtp, teams]` instead of port numbers.

Each entry cites where its ports come from. "conferencing.md" is ../shared/reference/conferencing.md,
the project's summary of the vendor documents and RFCs. A config may replace any entry (for instance the
RTP range its PBX really uses) through resolve(name, overrides).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType

from policy.model import ICMP, ICMPV6, TCP, UDP, PortMatch, PortRange, Service


def _ports(protocol: int, start: int, end: int | None = None) -> PortMatch:
    return PortMatch(protocol, PortRange(start, start if end is None else end))


def _service(name: str, *matches: PortMatch) -> Service:
    return Service(name, matches)


_STUN = (_ports(UDP, 3478), _ports(TCP, 3478))  # RFC 8489 (IANA "stun"): 3478 for UDP and TCP
_STUNS = (_ports(TCP, 5349),)  # RFC 8489, RFC 8656 (IANA "stuns", "turns"): 5349 over TLS

_ALL = [
    # RFC 3261 (default ports of sip: and sips: URIs): 5060 UDP and TCP, 5061 TLS; conferencing.md.
    _service("sip", _ports(UDP, 5060), _ports(TCP, 5060), _ports(TCP, 5061)),
    _service("sip-tls", _ports(TCP, 5061)),  # RFC 3261 / RFC 5630: sips over TLS
    # RFC 3550 gives RTP no fixed port; 10000-20000 is the common PBX range (conferencing.md "RTP").
    _service("rtp", _ports(UDP, 10000, 20000)),
    # ITU-T H.225.0 / IANA: 1718 gatekeeper discovery, 1719 RAS (UDP), 1720 call signalling (TCP);
    # conferencing.md "H.323". H.245 and media use dynamic ports and need their own rules.
    _service("h323", _ports(UDP, 1718, 1719), _ports(TCP, 1720)),
    _service("stun", *_STUN),
    _service("turn", *_STUN, *_STUNS),  # RFC 8656: TURN on the STUN ports, 5349 for TLS
    # RFC 8656 (Allocate): relay ports SHOULD come from 49152-65535; conferencing.md.
    _service("turn-relay", _ports(UDP, 49152, 65535)),
    _service("webrtc", *_STUN, *_STUNS),  # RFC 8835 (ICE via STUN and TURN servers); conferencing.md
    # Microsoft Learn, "Implement Quality of Service (QoS) in Microsoft Teams": client source ports
    # audio 50000-50019 (EF), video 50020-50039 (AF41), sharing 50040-50059 (AF21); conferencing.md.
    _service("teams-audio", _ports(UDP, 50000, 50019)),
    _service("teams-video", _ports(UDP, 50020, 50039)),
    _service("teams-sharing", _ports(UDP, 50040, 50059)),
    _service("teams", _ports(UDP, 50000, 50059)),
    # TrueConf Server documentation (ports): TCP 4307 signalling and media, TCP 4310 registration;
    # conferencing.md "TrueConf". Its web/API on 443 is the https service.
    _service("trueconf", _ports(TCP, 4307), _ports(TCP, 4310)),
    _service("https", _ports(TCP, 443)),  # RFC 9110 §4.2.2
    _service("quic", _ports(UDP, 443)),  # RFC 9114 §3.1 (HTTP/3 over QUIC on UDP 443)
    _service("dns", _ports(UDP, 53), _ports(TCP, 53)),  # RFC 1035 §4.2, RFC 7766
    _service("ssh", _ports(TCP, 22)),  # RFC 4253 §4.1
    _service("ike", _ports(UDP, 500), _ports(UDP, 4500)),  # RFC 7296 §2, RFC 3948 §2 (NAT-T)
    _service("icmp", PortMatch(ICMP)),  # RFC 792: IP protocol 1
    _service("icmpv6", PortMatch(ICMPV6)),  # RFC 4443: IP protocol 58
]

SERVICES: Mapping[str, Service] = MappingProxyType({s.name: s for s in _ALL})


class UnknownService(KeyError):
    """A service name that is neither built in nor defined by the config."""

    def __init__(self, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
        self.name = name
        self.message = f"unknown service {name!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.message


# The services whose UDP ports a tunnel's call-quality observer looks at unless its config names others:
# PBX RTP, Teams media, and STUN/TURN's port where WebRTC media may be relayed.
CALL_SERVICES = ("rtp", "teams", "webrtc")


def udp_ranges(names: tuple[str, ...],
               overrides: Mapping[str, Service] = MappingProxyType({})) -> tuple[tuple[int, int], ...]:
    """The UDP port ranges of these services, merged where they overlap or touch (raises UnknownService)."""
    spans = sorted({(m.ports.start, m.ports.end) for name in names for m in resolve(name, overrides).matches
                    if m.protocol == UDP})
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def resolve(name: str, overrides: Mapping[str, Service] = MappingProxyType({})) -> Service:
    """The service called name: the config's own definition first, else the built-in one."""
    service = overrides.get(name) or SERVICES.get(name)
    if service is None:
        raise UnknownService(name, list(dict.fromkeys([*SERVICES, *overrides])))
    return service
