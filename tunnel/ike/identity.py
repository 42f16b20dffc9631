"""IKE identities (RFC 7296 §3.5) as admins write them and as they travel in ID payloads.

Apart from certs.py (X.509 paths and signatures) so that reading a configuration of PSK tunnels does not
import cryptography's X.509 machinery: only distinguished names need it, and import it when met.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnel.errors import SitelinkError
from tunnel.ike.constants import IdType

if TYPE_CHECKING:
    from cryptography import x509


class InvalidIdentity(SitelinkError):
    """An identity written by an admin (config file, `pki issue --id`) cannot be an IKE ID."""

    exit_status = 2


# -- identities (RFC 7296 §3.5) -------------------------------------------------------------------------

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True)
class PeerIdentity:
    """An IKE ID: the IdType and the ID payload's data octets (RFC 7296 §3.5), as sent on the wire."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> PeerIdentity:
        """Read an identity as an admin writes it (strongSwan's conventions):

        `198.18.1.2` / `fd00::1` -> ID_IPV4_ADDR / ID_IPV6_ADDR; `CN=gw1,O=Acme` (RFC 4514) ->
        ID_DER_ASN1_DN; `user@example.net` -> ID_RFC822_ADDR; `@gw.example` or `gw.example` -> ID_FQDN;
        `@#0a1b...` -> ID_KEY_ID (hex).
        """
        text = text.strip()
        if not text:
            raise InvalidIdentity("an identity must not be empty")
        if text.startswith("@#"):
            try:
                key_id = bytes.fromhex(text[2:])
            except ValueError:
                raise InvalidIdentity(f"identity {text!r}: '@#' must be followed by hex digits") from None
            if not key_id:
                raise InvalidIdentity(f"identity {text!r}: '@#' must be followed by hex digits")
            return cls(IdType.ID_KEY_ID, key_id)
        if text.startswith("@"):
            return cls(IdType.ID_FQDN, _fqdn(text[1:], text))
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            kind = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
            return cls(kind, address.packed)
        if "=" in text:
            from cryptography import x509  # distinguished names only: the start path of a PSK gateway skips it

            try:
                name = x509.Name.from_rfc4514_string(text)
            except ValueError as exc:
                detail = f": {exc}" if str(exc) else ""
                raise InvalidIdentity(f"identity {text!r} is not a distinguished name (RFC 4514){detail}") from None
            return cls(IdType.ID_DER_ASN1_DN, name.public_bytes())
        if "@" in text:
            local, _, domain = text.partition("@")
            if not local or not domain or "@" in domain or any(c.isspace() for c in text):
                raise InvalidIdentity(f"identity {text!r} is not an email address (user@domain)")
            _fqdn(domain, text)
            return cls(IdType.ID_RFC822_ADDR, text.encode("utf-8"))
        return cls(IdType.ID_FQDN, _fqdn(text, text))

    def __str__(self) -> str:
        if self.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return f"<{len(self.data)}-byte address>"
        if self.id_type == IdType.ID_DER_ASN1_DN:
            name = _name_from_der(self.data)
            return _printable(name.rfc4514_string()) if name is not None else "<malformed DN>"
        if self.id_type == IdType.ID_KEY_ID:
            return "@#" + self.data.hex()
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return _printable(self.data.decode("utf-8", "backslashreplace"))
        return f"<ID type {self.id_type}, {len(self.data)} bytes>"


def _fqdn(name: str, original: str) -> bytes:
    name = name.rstrip(".")
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidIdentity(f"identity {original!r}: a host name must be ASCII (use its xn-- form)") from None
    if not name or len(encoded) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidIdentity(f"identity {original!r} is not a host name, IP address, email or DN")
    return encoded


def _name_from_der(data: bytes) -> x509.Name | None:
    from cryptography import x509

    try:
        return x509.Name.from_bytes(data)
    except ValueError:
        return None


def _printable(text: str, limit: int = 80) -> str:
    """A peer-supplied string made safe for one log line: no control characters, bounded length."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
