"""Proposal strings as strongSwan writes them (`aes256gcm16-prfsha256-x25519`) -> IkeSuite / EspSuite.

PURE: text in, suite or ValueError out; the loader adds the file position. The names are strongSwan's
(proposal_keywords), restricted to what sitelink implements: AEAD only (ENCR_AES_GCM_16, RFC 5282),
so an IKE proposal has no integrity part and an ESP proposal has neither integrity nor PRF.

  IKE: encryption-prf-dh, every part required, e.g. aes256gcm16-prfsha384-ecp256
  ESP: encryption[-noesn][-dh], e.g. aes256gcm16 or aes256gcm16-x25519 (the DH group is PFS for rekeying)
"""

from __future__ import annotations

from tunnel.config.yamlnodes import quote
from tunnel.ike.constants import DhGroup, EncrId, Esn, PrfId
from tunnel.ike.proposal import EspSuite, IkeSuite

# name -> (ENCR id, key bits). strongSwan's aesNNNgcm16 is AES-GCM with a 16-octet ICV (RFC 4106 §8.1).
ENCRYPTION = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes192gcm16": (EncrId.AES_GCM_16, 192),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
}
PRF = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
DH = {
    "x25519": DhGroup.CURVE_25519,
    "curve25519": DhGroup.CURVE_25519,
    "ecp256": DhGroup.ECP_256,
    "ecp384": DhGroup.ECP_384,
    "modp2048": DhGroup.MODP_2048,
    "modp3072": DhGroup.MODP_3072,
}
NO_ESN = "noesn"
ESN = "esn"
IKE_FORM = "encryption-prf-dh, e.g. aes256gcm16-prfsha256-x25519"
ESP_FORM = "encryption[-noesn][-dh], e.g. aes256gcm16 or aes256gcm16-x25519"
_KINDS = (("encryption algorithm", ENCRYPTION), ("PRF", PRF), ("DH group", DH))


def parse_ike_proposal(text: str) -> IkeSuite:
    """`encr-prf-dh` -> IkeSuite; raise ValueError naming the offending part and the allowed names."""
    parts = _split(text, "IKE proposal", IKE_FORM)
    if len(parts) != 3:
        raise ValueError(f"IKE proposal {quote(text)} has {len(parts)} part(s); it must be {IKE_FORM} "
                         "(every part is required)")
    where = ("IKE proposal", text, IKE_FORM)
    encr_id, key_bits = _lookup(parts[0], "encryption algorithm", ENCRYPTION, where)
    return IkeSuite(encr=encr_id, key_bits=key_bits, prf=_lookup(parts[1], "PRF", PRF, where),
                    dh=_lookup(parts[2], "DH group", DH, where))


def parse_esp_proposal(text: str) -> EspSuite:
    """`encr[-noesn][-dh]` -> EspSuite; `esn` is refused (not implemented), as is anything unknown."""
    encr, *rest = _split(text, "ESP proposal", ESP_FORM)
    encr_id, key_bits = _lookup(encr, "encryption algorithm", ENCRYPTION, ("ESP proposal", text, ESP_FORM))
    dh: int | None = None
    seen_noesn = False
    for part in rest:
        if part == ESN:
            raise ValueError(f"ESP proposal {quote(text)}: extended sequence numbers (esn) are not implemented "
                             f"yet; leave the part out or write {NO_ESN}")
        if part == NO_ESN:
            if seen_noesn:
                raise ValueError(f"ESP proposal {quote(text)} names {NO_ESN} twice")
            seen_noesn = True
        elif part in DH:
            if dh is not None:
                raise ValueError(f"ESP proposal {quote(text)} names more than one DH group; give one per proposal "
                                 "and list alternatives as separate proposals")
            dh = DH[part]
        elif part in PRF:
            raise ValueError(f"ESP proposal {quote(text)}: {quote(part)} is a PRF, which ESP does not use; "
                             f"write {ESP_FORM}")
        else:
            allowed = ", ".join([NO_ESN, *DH])
            raise ValueError(f"ESP proposal {quote(text)}: unknown part {quote(part)} after the encryption "
                             f"algorithm; allowed: {allowed}")
    return EspSuite(encr=encr_id, key_bits=key_bits, esn=Esn.NO_ESN, dh=dh)


def _split(text: str, label: str, form: str) -> list[str]:
    if not text.strip():
        raise ValueError(f"{label} must not be empty; it must be {form}")
    parts = text.split("-")
    if any(not part for part in parts):
        raise ValueError(f"{label} {quote(text)} has an empty part; it must be {form}")
    return parts


def _lookup(part: str, kind: str, table: dict, where: tuple[str, str, str]):  # noqa: ANN202 (the table's values)
    """table[part], or a ValueError that says what part is if it belongs elsewhere, else the allowed names."""
    label, text, form = where
    if part in table:
        return table[part]
    other = next((name for name, names in _KINDS if part in names), None)
    if other is not None:
        article = "an" if other[0] in "aeiou" else "a"
        raise ValueError(f"{label} {quote(text)}: {quote(part)} is {article} {other} where the {kind} belongs; "
                         f"the order is {form}")
    note = " (sitelink implements AES-GCM with a 16-byte ICV only)" if table is ENCRYPTION else ""
    raise ValueError(f"{label} {quote(text)}: unknown {kind} {quote(part)}; allowed: {', '.join(table)}{note}")
