"""Opt-in export of keys in Wireshark's formats, so a WAN capture can be decrypted while debugging: ESP
keys as `esp_sa` rows (Preferences > Protocols > ESP) and IKE SA keys as `ikev2_decryption_table` rows
(Protocols > ISAKMP). Off unless asked for (command line or gateway.key_log); the gateway warns in its
log while it is on, because whoever reads the files can read the tunnels' traffic and IKE."""

from __future__ import annotations

import os
from pathlib import Path

from tunnel.ike.events import ChildSaEstablished
from tunnel.ike.keys import IkeKeys

ESP_GCM16 = "AES-GCM with 16 octet ICV [RFC4106]"


class EspKeyLog:
    def __init__(self, path: Path, local_address: str) -> None:
        self.path = Path(path)
        self.local = local_address if local_address not in ("0.0.0.0", "::") else "*"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)

    def __call__(self, event: ChildSaEstablished) -> None:
        family = "IPv6" if ":" in event.remote[0] else "IPv4"
        rows = [
            (self.local, event.remote[0], event.spi_out, event.key_out.reveal()),
            (event.remote[0], self.local, event.spi_in, event.key_in.reveal()),
        ]
        with open(self.path, "a", encoding="ascii") as f:
            for src, dst, spi, key in rows:
                f.write(f'"{family}","{src}","{dst}","{spi:#010x}","{ESP_GCM16}","0x{key.hex()}","NULL",""\n')


class IkeKeyLog:
    """ikev2_decryption_table rows: SPIs, SK_ei and SK_er (AES-GCM key and salt, RFC 5282 §7.1), the
    encryption algorithm as Wireshark names it, no integrity keys (AEAD)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)

    def __call__(self, spi_i: bytes, spi_r: bytes, keys: IkeKeys, key_bits: int) -> None:
        cipher = f"AES-GCM-{key_bits} with 16 octet ICV [RFC5282]"
        with open(self.path, "a", encoding="ascii") as f:
            f.write(f'{spi_i.hex()},{spi_r.hex()},{keys.sk_ei.hex()},{keys.sk_er.hex()},"{cipher}",,,'
                    '"NONE [RFC4306]"\n')
