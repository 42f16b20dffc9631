"""IKE fragmentation (RFC 7383): a large encrypted message sent as several Encrypted Fragment (SKF)
messages that each fit a path MTU, instead of one UDP datagram the IP layer fragments (and routers that
drop IP fragments lose). Certificates with an intermediate make IKE_AUTH 2-5 kB.

PURE (ARCHITECTURE.md ring 1). Each fragment is an IKE message of its own:

    IKE header (Next Payload = SKF, same Message ID in every fragment)
    SKF header: Next Payload (the first inner payload's type in fragment 1, else 0) | Fragment Number |
                Total Fragments                                                       (RFC 7383 §2.5)
    IV | ciphertext of (a slice of the inner payload chain | Pad Length) | ICV

and is sealed on its own, the AAD being the IKE header, the SKF generic header and the two counters
(RFC 5282 §5.1 applied to §2.5's unencrypted fields). The receiver opens every fragment before it keeps
it, so nothing a third party sends is stored; what an authenticated peer may make us hold is bounded
(MAX_FRAGMENTS, MAX_MESSAGE), one message per direction at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tunnel.errors import MalformedPacket
from tunnel.ike.constants import IKE_HEADER_LEN, PayloadType
from tunnel.ike.message import (
    IkeHeader,
    Message,
    Payload,
    SkfPayload,
    encode_header,
    encode_payloads,
    parse_payloads,
)

GENERIC_HEADER_LEN = 4
SKF_FIELDS_LEN = 4  # Fragment Number, Total Fragments
IV_LEN, ICV_LEN, PAD_LENGTH_LEN = 8, 16, 1  # AES-GCM (RFC 5282), no padding
OVERHEAD = IKE_HEADER_LEN + GENERIC_HEADER_LEN + SKF_FIELDS_LEN + IV_LEN + PAD_LENGTH_LEN + ICV_LEN
MAX_FRAGMENTS = 64  # a 64 kB message in ~1 kB pieces; more is no IKE message of a gateway
MAX_MESSAGE = 64 * 1024  # the largest reassembled inner payload chain we hold
MIN_FRAGMENT_MESSAGE = 576 - 28  # RFC 7383 §2.5.1: never fragment below what IPv4 must carry
DEFAULT_FRAGMENT_SIZE = 1280  # the IP packet size fragments are cut to (strongSwan's charon.fragment_size)
IP_UDP_OVERHEAD = 40 + 8 + 4  # IPv6 header (the larger), UDP, non-ESP marker: one size for both families


def max_message(fragment_size: int) -> int:
    """The largest IKE message (without IP/UDP headers) for an IP packet of fragment_size bytes."""
    return max(MIN_FRAGMENT_MESSAGE, fragment_size - IP_UDP_OVERHEAD)


def encode_fragments(header: IkeHeader, payloads: Sequence[Payload], seal: Callable[[bytes, bytes], bytes],
                     max_len: int) -> list[bytes]:
    """The message as SKF fragments of at most max_len bytes each (header.exchange, flags and Message ID
    as for the unfragmented message)."""
    first, inner = encode_payloads(payloads)
    room = max_len - OVERHEAD
    if room < 1:
        raise ValueError(f"fragments of {max_len} bytes cannot carry data")
    chunks = [inner[i:i + room] for i in range(0, len(inner), room)] or [b""]
    total = len(chunks)
    if total > MAX_FRAGMENTS:
        raise ValueError(f"a message of {len(inner)} bytes needs {total} fragments (at most {MAX_FRAGMENTS})")
    out = []
    for number, chunk in enumerate(chunks, 1):
        plaintext = chunk + b"\x00"  # Pad Length 0
        skf_len = GENERIC_HEADER_LEN + SKF_FIELDS_LEN + IV_LEN + len(plaintext) + ICV_LEN
        ike_header = encode_header(header, PayloadType.SKF, IKE_HEADER_LEN + skf_len)
        aad = (ike_header + struct.pack("!BBH", first if number == 1 else 0, 0, skf_len)
               + struct.pack("!HH", number, total))
        sealed = seal(aad, plaintext)
        if len(sealed) != IV_LEN + len(plaintext) + ICV_LEN:
            raise ValueError("seal returned an unexpected length")
        out.append(aad + sealed)
    return out


class FragmentRefused(MalformedPacket):
    """A fragment that cannot belong to the message being collected (numbers out of range, too large)."""


@dataclass
class Reassembly:
    """The fragments of one message so far, each already opened (authenticated and decrypted)."""

    message_id: int
    total: int
    first_inner: int = 0
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    def add(self, number: int, first_inner: int, plaintext: bytes) -> bool:
        """Keep a fragment's inner bytes (Pad Length removed); True when every fragment is here. A
        duplicate is ignored."""
        if number in self.pieces:
            return False
        if self.size + len(plaintext) > MAX_MESSAGE:
            raise FragmentRefused(f"fragmented message larger than {MAX_MESSAGE} bytes")
        self.pieces[number] = plaintext
        self.size += len(plaintext)
        if number == 1:
            self.first_inner = first_inner
        return len(self.pieces) == self.total

    def message(self, header: IkeHeader) -> Message:
        inner = b"".join(self.pieces[n] for n in range(1, self.total + 1))
        return Message(header, parse_payloads(self.first_inner, inner))


def check(skf: SkfPayload) -> None:
    """RFC 7383 §2.5: 1 <= Fragment Number <= Total Fragments; and our own bound on the total."""
    if not 1 <= skf.number <= skf.total:
        raise FragmentRefused(f"fragment {skf.number} of {skf.total}")
    if skf.total > MAX_FRAGMENTS:
        raise FragmentRefused(f"{skf.total} fragments (at most {MAX_FRAGMENTS} accepted)")
    if skf.number != 1 and skf.first_inner != PayloadType.NONE:
        raise FragmentRefused(f"fragment {skf.number} names a first payload (only fragment 1 may)")


__all__ = ["DEFAULT_FRAGMENT_SIZE", "FragmentRefused", "MAX_FRAGMENTS", "Reassembly", "check",
           "encode_fragments", "max_message"]
