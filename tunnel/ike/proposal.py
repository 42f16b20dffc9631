"""SA proposals: what we offer and how the responder chooses (RFC 7296 §2.7, §3.3).

sitelink speaks AEAD only (ENCR_AES_GCM_16 with a Key Length attribute, no INTEG transform, RFC 5282
§8). The responder walks its *own* preference list, strongest first, and takes the first suite the
initiator offered anywhere in its proposals, so the result is the strongest combination both allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tunnel.ike.constants import DhGroup, EncrId, Esn, PrfId, ProtocolId, TransformType
from tunnel.ike.errors import BadProposalSpi, NoProposalChosen
from tunnel.ike.message import Proposal, SaPayload, Transform


@dataclass(frozen=True)
class IkeSuite:
    encr: int = EncrId.AES_GCM_16
    key_bits: int = 256
    prf: int = PrfId.HMAC_SHA2_256
    dh: int = DhGroup.CURVE_25519

    @property
    def name(self) -> str:
        return f"{EncrId(self.encr).name}_{self.key_bits}/PRF_{PrfId(self.prf).name}/{DhGroup(self.dh).name}"

    def transforms(self) -> tuple[Transform, ...]:
        return (
            Transform(TransformType.ENCR, self.encr, self.key_bits),
            Transform(TransformType.PRF, self.prf),
            Transform(TransformType.DH, self.dh),
        )


@dataclass(frozen=True)
class EspSuite:
    encr: int = EncrId.AES_GCM_16
    key_bits: int = 256
    esn: int = Esn.NO_ESN
    dh: int | None = None  # PFS group for CREATE_CHILD_SA (issue: lifecycle); None in IKE_AUTH

    @property
    def name(self) -> str:
        return f"{EncrId(self.encr).name}_{self.key_bits}/{Esn(self.esn).name}"

    def transforms(self) -> tuple[Transform, ...]:
        result = [Transform(TransformType.ENCR, self.encr, self.key_bits)]
        if self.dh is not None:
            result.append(Transform(TransformType.DH, self.dh))
        result.append(Transform(TransformType.ESN, self.esn))  # RFC 7296 §3.3.3: ESN is mandatory for ESP
        return tuple(result)


def offer_ike(suites: Sequence[IkeSuite], spi: bytes = b"") -> SaPayload:
    """One proposal per suite, in preference order (numbered from 1, §3.3.1)."""
    return SaPayload(tuple(Proposal(n, ProtocolId.IKE, spi, s.transforms()) for n, s in enumerate(suites, 1)))


def offer_esp(suites: Sequence[EspSuite], spi: bytes) -> SaPayload:
    return SaPayload(tuple(Proposal(n, ProtocolId.ESP, spi, s.transforms()) for n, s in enumerate(suites, 1)))


Offered = dict[int, set[tuple[int, int | None]]]  # transform type -> {(transform id, key length)}
Suite = TypeVar("Suite", IkeSuite, EspSuite)


def _by_type(proposal: Proposal) -> Offered:
    found: Offered = {}
    for t in proposal.transforms:
        found.setdefault(int(t.type), set()).add((t.id, t.key_length))
    return found


def _ike_allows(offered: Offered, suite: IkeSuite) -> bool:
    return (
        (suite.encr, suite.key_bits) in offered.get(TransformType.ENCR, ())
        and (suite.prf, None) in offered.get(TransformType.PRF, ())
        and (suite.dh, None) in offered.get(TransformType.DH, ())
        and not (offered.get(TransformType.INTEG, set()) - {(0, None)})  # AEAD: no integrity transform
    )


def _esp_allows(offered: Offered, suite: EspSuite) -> bool:
    dh_offered = offered.get(TransformType.DH, set()) - {(0, None)}
    if suite.dh is None and dh_offered and (0, None) not in offered.get(TransformType.DH, set()):
        return False  # the peer insists on PFS we are not configured for
    if suite.dh is not None and (suite.dh, None) not in dh_offered:
        return False
    esn = offered.get(TransformType.ESN, {(Esn.NO_ESN, None)})
    return (
        (suite.encr, suite.key_bits) in offered.get(TransformType.ENCR, ())
        and (suite.esn, None) in esn
        and not (offered.get(TransformType.INTEG, set()) - {(0, None)})
    )


IKE_SPI_LEN = 8  # an IKE rekey's new SPI (§3.3.1); IKE_SA_INIT's proposals carry none
ESP_SPI_LEN = 4
ESP_SPI_RESERVED = 256  # 0-255 are reserved (RFC 4303 §2.1)


def spi_ok(protocol: int, spi: bytes, ike_spi_len: int = 0) -> bool:
    """A proposal's SPI as §3.3.1 and RFC 4303 §2.1 want it: ESP 4 bytes, not 0-255; IKE none in
    IKE_SA_INIT and 8 bytes, not all zero, in a rekey."""
    if protocol == ProtocolId.ESP:
        return len(spi) == ESP_SPI_LEN and int.from_bytes(spi, "big") >= ESP_SPI_RESERVED
    if protocol == ProtocolId.IKE:
        return len(spi) == ike_spi_len and (ike_spi_len == 0 or any(spi))
    return False


def select_ike(offered: SaPayload, preferences: Iterable[IkeSuite],
               spi_len: int = 0) -> tuple[Proposal, IkeSuite]:
    """Responder choice for IKE; the returned Proposal (one, with the initiator's number) goes back.
    spi_len: 0 in IKE_SA_INIT, IKE_SPI_LEN in a rekey."""
    return _select(offered, preferences, ProtocolId.IKE, _ike_allows, spi_len)


def select_esp(offered: SaPayload, preferences: Iterable[EspSuite]) -> tuple[Proposal, EspSuite]:
    return _select(offered, preferences, ProtocolId.ESP, _esp_allows)


def _select(offered: SaPayload, preferences: Iterable[Suite], protocol: int,
            allows: Callable[[Offered, Suite], bool], ike_spi_len: int = 0) -> tuple[Proposal, Suite]:
    """Every proposal is looked at, and one with a bad SPI is never chosen (the chosen SPI becomes the
    peer's SPI of an SA: an SPI of 0 must not get as far as the data plane)."""
    mine = [p for p in offered.proposals if p.protocol == protocol]
    candidates = [(p, _by_type(p)) for p in mine if spi_ok(protocol, p.spi, ike_spi_len)]
    for suite in preferences:
        for proposal, types in candidates:
            if allows(types, suite):
                return Proposal(proposal.number, protocol, proposal.spi, suite.transforms()), suite
    if len(candidates) < len(mine) and any(allows(_by_type(p), s) for p in mine for s in preferences):
        raise BadProposalSpi(f"the {ProtocolId(protocol).name} proposals we could accept carry invalid SPIs")
    raise NoProposalChosen("no proposal offered matches the configured " + ProtocolId(protocol).name + " proposals")


def accept_ike(chosen: SaPayload, offered: Sequence[IkeSuite], spi_len: int = 0) -> IkeSuite:
    """Initiator check of the responder's answer: exactly one proposal, and it must be one we offered."""
    return _accept(chosen, offered, ProtocolId.IKE, _ike_allows, spi_len)


def accept_esp(chosen: SaPayload, offered: Sequence[EspSuite]) -> tuple[EspSuite, bytes]:
    suite = _accept(chosen, offered, ProtocolId.ESP, _esp_allows)
    return suite, chosen.proposals[0].spi


def _accept(chosen: SaPayload, offered: Sequence[Suite], protocol: int,
            allows: Callable[[Offered, Suite], bool], ike_spi_len: int = 0) -> Suite:
    if len(chosen.proposals) != 1 or chosen.proposals[0].protocol != protocol:
        raise NoProposalChosen("the responder must return exactly one proposal (RFC 7296 §2.7)")
    if not spi_ok(protocol, chosen.proposals[0].spi, ike_spi_len):
        raise BadProposalSpi(f"the responder's {ProtocolId(protocol).name} proposal carries an invalid SPI")
    types = _by_type(chosen.proposals[0])
    for suite in offered:
        if allows(types, suite) and sum(len(v) for v in types.values()) == len(suite.transforms()):
            return suite
    raise NoProposalChosen("the responder chose a proposal we did not offer")
