"""IKE errors carry the Notify type the peer should see (RFC 7296 §3.10.1) and whether the IKE SA
must go (fatal) or only the exchange failed."""

from __future__ import annotations

from tunnel.errors import SitelinkError
from tunnel.ike.constants import NotifyType
from tunnel.ike.drops import IkeDrop


class IkeError(SitelinkError):
    notify: NotifyType | None = None
    fatal = True
    drop: IkeDrop | None = None  # also counted under this reason (a value the peer chose that we refuse)

    def __init__(self, message: str, notify_data: bytes = b"") -> None:
        super().__init__(message)
        self.notify_data = notify_data


class InvalidSyntax(IkeError):
    notify = NotifyType.INVALID_SYNTAX


class NoProposalChosen(IkeError):
    notify = NotifyType.NO_PROPOSAL_CHOSEN


class BadProposalSpi(NoProposalChosen):
    """Every acceptable proposal carried an SPI of the wrong size or a reserved value."""

    drop = IkeDrop.BAD_PROPOSAL_SPI


class InvalidKePayload(IkeError):
    """The KE payload's group is not the one selected; notify_data carries the group we want (§1.2)."""

    notify = NotifyType.INVALID_KE_PAYLOAD


class AuthenticationFailed(IkeError):
    notify = NotifyType.AUTHENTICATION_FAILED


class CertificateRevoked(AuthenticationFailed):
    drop = IkeDrop.CERT_REVOKED


class RevocationUnknown(AuthenticationFailed):
    """The revocation status could not be established and the configuration says hard-fail."""

    drop = IkeDrop.CERT_STATUS_UNKNOWN


class RevocationPending(IkeError):
    """The status of certificates on the peer's path is being asked (OCSP, tunnel/ike/ocsp.py): the
    message is dropped unanswered and handled again when it comes again. queries: (key naming the answer,
    url, DER request to POST there; empty when already asked), one per certificate still unknown."""

    notify = None
    fatal = False
    drop = IkeDrop.REVOCATION_PENDING

    def __init__(self, queries: list[tuple[bytes, str, bytes]]) -> None:
        super().__init__("waiting for the OCSP responder")
        self.queries = queries


class BadIdentity(AuthenticationFailed):
    """An identity too long to be one, or a name with control characters: never compared, never logged."""

    drop = IkeDrop.BAD_IDENTITY


class TsUnacceptable(IkeError):
    notify = NotifyType.TS_UNACCEPTABLE
    fatal = False


class IntegrityError(IkeError):
    """An SK payload failed its ICV: the message is dropped silently (§2.21.2), never answered."""

    notify = None


class DegeneratePublicValue(IkeError):
    """A DH public value that is not on the curve, or yields an all-zero/identity secret (RFC 8031 §2.3)."""

    notify = NotifyType.INVALID_SYNTAX


class TemporaryFailure(IkeError):
    """§2.25: the request collides with a rekey or delete in progress; the peer retries later."""

    notify = NotifyType.TEMPORARY_FAILURE
    fatal = False


class ChildSaNotFound(IkeError):
    """§2.25: REKEY_SA names a Child SA we do not have."""

    notify = NotifyType.CHILD_SA_NOT_FOUND
    fatal = False
