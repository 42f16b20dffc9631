"""Named reasons for every IKE message the gateway refuses, like the data plane's DropReason: each is a
counter, exported per tunnel (sitelink_ike_drops_total) and shown by `sitelink status`, so an admin can
tell a scan (unknown peers) or an attack (integrity failures) from a misconfiguration."""

from __future__ import annotations

import enum


class IkeDrop(enum.IntEnum):
    MALFORMED = 1  # the header, payload chain or a payload's body does not parse
    INTEGRITY = 2  # the SK payload failed its ICV: forged, corrupted or wrong keys; never answered (§2.21.2)
    UNKNOWN_SPI = 3  # no IKE SA has this initiator SPI, and it is not a new IKE_SA_INIT request
    UNKNOWN_PEER = 4  # a new IKE_SA_INIT from an address no tunnel is configured for
    COOKIE_REQUIRED = 5  # too many half-open SAs: answered with a COOKIE, no state kept (§2.6)
    BAD_COOKIE = 6  # a COOKIE that does not verify (forged, or older than two secret periods)
    CLOSED = 7  # for an IKE SA that has just closed
    UNEXPECTED_RESPONSE = 8  # a response whose message ID matches no request of ours (§2.3)
    INVALID_MESSAGE_ID = 9  # a request that is neither the next one nor a retransmission (§2.3)
    UNSUPPORTED_EXCHANGE = 10  # an exchange type we do not implement (IKE_SESSION_RESUME, ...)
    UNEXPECTED_IKE_AUTH = 11  # IKE_AUTH when the SA is not waiting for it
    INFORMATIONAL_BEFORE_AUTH = 12  # INFORMATIONAL on an SA that is not authenticated yet
    IKE_REKEY_REFUSED = 13  # the peer refused our IKE SA rekey (§2.25); we try again later
    IKE_REKEY_FAILED = 14  # the peer's answer to our IKE SA rekey was unusable; we try again later
    INTERNAL = 15  # a bug (a state change not in a transition table, an exception): that SA failed, nothing else
    NO_KEYS = 16  # an exchange that needs the SK payload before IKE_SA_INIT made keys (forged plaintext)
    UNEXPECTED_IKE_SA_INIT = 17  # IKE_SA_INIT that is not the first exchange of a new IKE SA
    WRONG_ROLE = 18  # the header's initiator flag or SPIs do not fit the IKE SA whose SPI it names
    HALF_OPEN_EVICTED = 19  # a half-open IKE SA dropped, oldest first, to make room in a full table
    SPI_COLLISION = 20  # a new IKE SA's SPI of ours is in use already: refused, never merged
    BAD_PROPOSAL_SPI = 21  # a proposal's SPI of the wrong size or a reserved value (ESP 0-255)
    BAD_IDENTITY = 22  # an IDi/IDr that is too long, or a name with control characters
    TOO_MANY_SELECTORS = 23  # a TS payload with more traffic selectors than we ever accept
    CERT_REVOKED = 24  # the peer's certificate (or a CA above it) is on a CRL we hold: AUTHENTICATION_FAILED
    CERT_STATUS_UNKNOWN = 25  # its CA's CRL is stale or does not verify, and revocation is hard-fail
    FRAGMENT_UNEXPECTED = 26  # an SKF fragment on an IKE SA that did not negotiate fragmentation (RFC 7383)
    BAD_FRAGMENT = 27  # a fragment numbered out of range, too many or too large, or a stale retransmission
    REVOCATION_PENDING = 28  # IKE_AUTH held back while the OCSP responder is asked (the peer retransmits)

    @property
    def label(self) -> str:
        return self.name.lower()


_SLOTS = max(IkeDrop) + 1


class IkeDrops:
    """Plain counters, read at scrape time; shared by every IKE SA of a tunnel so they outlive the SAs."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * _SLOTS

    def add(self, reason: IkeDrop) -> None:
        self.counts[reason] += 1

    def by_reason(self) -> dict[str, int]:
        return {reason.label: self.counts[reason] for reason in IkeDrop if self.counts[reason]}
