"""The ledger of manual keys a gateway has used. A manually keyed SA starts its sequence numbers at 1
again on every start (nothing else persists them), and AES-GCM with a repeated (key, nonce) pair loses
its confidentiality and integrity: RFC 8221 §6 forbids counter-mode ciphers with manual keys for this
reason, and the peer's replay window would start afresh too. So a key, once installed, is never
installed again: a restart or a reload that would reuse one is refused until new keys are made
(`sitelink manual-keys`). Only fingerprints are written, never a key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tunnel.config.model import Tunnel
from tunnel.errors import KeyFileError

_DOMAIN = b"sitelink manual ESP key\x00"


class ManualKeyLedger:
    def __init__(self, directory: Path, gateway: str) -> None:
        self.path = Path(directory) / f"{gateway}.manual-keys-used"

    def claim(self, tunnels: list[Tunnel]) -> None:
        """Record the tunnels' manual keys as used, or refuse (changing nothing) when any was used
        before, by an earlier run or by another tunnel."""
        wanted = {}
        for tunnel in tunnels:
            keys = tunnel.manual_keys
            if keys is None:
                continue
            for sa in (keys.outbound, keys.inbound):
                wanted[_fingerprint(sa.spi, sa.key.reveal())] = tunnel
        used = self._read()
        reused = sorted({t.name for fp, t in wanted.items() if fp in used})
        if reused or len(wanted) < 2 * sum(1 for t in tunnels if t.manual_keys is not None):
            names = ", ".join(reused) or "two tunnels sharing one"
            raise KeyFileError([
                f"manual keys of {names} were used before (ledger {self.path}): reusing them would repeat AES-GCM "
                "nonces and restart the replay window (RFC 8221 §6); make new ones with `sitelink manual-keys` "
                "and install them on both gateways"])
        if not wanted:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, "".join(f"{fp}\n" for fp in wanted).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise KeyFileError([f"cannot record manual keys as used in {self.path}: {exc.strerror or exc} "
                                "(set gateway.state_dir)"]) from None

    def _read(self) -> set[str]:
        try:
            return set(self.path.read_text(encoding="ascii").split())
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError([f"cannot read the manual-key ledger {self.path}: {exc}"]) from None


def _fingerprint(spi: int, key: bytes) -> str:
    return hashlib.sha256(_DOMAIN + spi.to_bytes(4, "big") + key).hexdigest()
