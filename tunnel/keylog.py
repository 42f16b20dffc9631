"""Opt-in export of ESP keys in Wireshark's `esp_sa` format (Preferences > Protocols > ESP), so a WAN
capture can be decrypted while debugging. Off unless asked for on the command line; the gateway warns
in its log while it is on, because whoever reads the file can read the tunnel's traffic."""

from __future__ import annotations

import os
from pathlib import Path

from tunnel.ike.events import ChildSaEstablished

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
