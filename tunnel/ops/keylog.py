"""Opt-in export of keys in Wireshark's formats, so a WAN capture can be decrypted while debugging: ESP
keys as `esp_sa` rows (Preferences > Protocols > ESP) and IKE SA keys as `ikev2_decryption_table` rows
(Protocols > ISAKMP). Off unless asked for (command line or gateway.key_log); the gateway warns in its
log while it is on, because whoever reads the files can read the tunnels' traffic and IKE.

A key log is opened once, never through a symbolic link, and kept open: a file swapped in under its
path afterwards receives nothing. An existing file must be a regular file of ours that only we can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tunnel.errors import DriverError
from tunnel.ike.events import ChildSaEstablished
from tunnel.ike.keys import IkeKeys

ESP_GCM16 = "AES-GCM with 16 octet ICV [RFC4106]"


class _KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise DriverError(f"cannot open the key log {self.path}: {exc.strerror or exc} "
                              "(a symbolic link is refused)") from None
        st = os.fstat(self._fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_uid != os.geteuid():
            problem = f"belongs to uid {st.st_uid}, not to the gateway's user"
        elif stat.S_IMODE(st.st_mode) & 0o077:
            problem = f"has mode {stat.S_IMODE(st.st_mode):04o}: group or others may read it (chmod 600)"
        if problem is not None:
            os.close(self._fd)
            raise DriverError(f"key log {self.path} {problem}")

    def write(self, text: str) -> None:
        os.write(self._fd, text.encode("ascii"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class EspKeyLog(_KeyFile):
    def __init__(self, path: Path, *local_addresses: str) -> None:
        """local_addresses: the listening address of each family (two on a dual-stack gateway)."""
        super().__init__(path)
        self.local = {":" in a: a if a not in ("0.0.0.0", "::") else "*" for a in local_addresses}

    def __call__(self, event: ChildSaEstablished) -> None:
        v6 = ":" in event.remote[0]
        family, local = "IPv6" if v6 else "IPv4", self.local.get(v6, "*")
        rows = [
            (local, event.remote[0], event.spi_out, event.key_out.reveal()),
            (event.remote[0], local, event.spi_in, event.key_in.reveal()),
        ]
        self.write("".join(f'"{family}","{src}","{dst}","{spi:#010x}","{ESP_GCM16}","0x{key.hex()}","NULL",""\n'
                           for src, dst, spi, key in rows))


class IkeKeyLog(_KeyFile):
    """ikev2_decryption_table rows: SPIs, SK_ei and SK_er (AES-GCM key and salt, RFC 5282 §7.1), the
    encryption algorithm as Wireshark names it, no integrity keys (AEAD)."""

    def __call__(self, spi_i: bytes, spi_r: bytes, keys: IkeKeys, key_bits: int) -> None:
        cipher = f"AES-GCM-{key_bits} with 16 octet ICV [RFC5282]"
        self.write(f'{spi_i.hex()},{spi_r.hex()},{keys.sk_ei.hex()},{keys.sk_er.hex()},"{cipher}",,,'
                   '"NONE [RFC4306]"\n')
