"""Manual keys are never installed twice (issue #13 item 13): sequence numbers restart at 1 with every
start, so the same key again would repeat AES-GCM nonces (RFC 8221 §6) and reopen the replay window."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.unit.test_config_loader import GOOD, SECOND_TUNNEL, make_keys, write
from tunnel.app.gateway import Gateway
from tunnel.config.ledger import ManualKeyLedger
from tunnel.config.loader import load_config
from tunnel.errors import KeyFileError


def config(tmp_path: Path, text: str = GOOD):
    make_keys(tmp_path, "b1", "b2")
    return load_config(write(tmp_path, text.replace("  name: hq\n", f"  name: hq\n  state_dir: {tmp_path / 'state'}\n")))


def test_a_manual_key_is_claimed_once(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ledger = ManualKeyLedger(cfg.state_dir, cfg.name)
    ledger.claim(list(cfg.tunnels))
    text = ledger.path.read_text()
    assert len(text.split()) == 2 and os.stat(ledger.path).st_mode & 0o777 == 0o600
    assert all(key.reveal().hex() not in text for t in cfg.tunnels for key in (t.manual_keys.outbound.key,))
    with pytest.raises(KeyFileError, match=r"were used before .* `sitelink manual-keys`"):
        ManualKeyLedger(cfg.state_dir, cfg.name).claim(list(cfg.tunnels))  # the next start
    assert ledger.path.read_text() == text  # a refusal records nothing


def test_a_restarted_gateway_refuses_its_old_manual_keys_before_touching_anything(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ManualKeyLedger(cfg.state_dir, cfg.name).claim(list(cfg.tunnels))  # the run before
    gateway = Gateway(cfg)
    with pytest.raises(KeyFileError):
        gateway.open()  # refused before any device, socket or SA exists
    assert gateway.forwarder.tunnels["branch1"].outbound is None


def test_two_tunnels_with_the_same_key_are_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, GOOD + SECOND_TUNNEL)
    first = cfg.tunnels[0]
    twin = dataclasses.replace(cfg.tunnels[1], manual_keys=first.manual_keys)
    with pytest.raises(KeyFileError, match="two tunnels sharing one"):
        ManualKeyLedger(cfg.state_dir, cfg.name).claim([first, twin])


def test_ike_tunnels_claim_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ledger = ManualKeyLedger(cfg.state_dir, cfg.name)
    ledger.claim([dataclasses.replace(t, manual_keys=None) for t in cfg.tunnels])
    assert not ledger.path.exists()


def test_a_reload_that_would_reinstall_a_manual_key_is_refused(tmp_path: Path) -> None:
    """A changed manual tunnel is set up again from scratch (sequence numbers from 1): with the same keys
    that reload is refused, and the running configuration stays."""
    import asyncio

    from tunnel.app.keying import Keying
    from tunnel.errors import ReloadRefused

    cfg = config(tmp_path)
    ManualKeyLedger(cfg.state_dir, cfg.name).claim(list(cfg.tunnels))  # what open() did
    gateway = Gateway(cfg)
    gateway.keying = Keying(cfg, gateway.forwarder, os.urandom)
    text = cfg.path.read_text()
    assert "local_subnets: [10.1.0.0/24]" in text
    cfg.path.write_text(text.replace("local_subnets: [10.1.0.0/24]", "local_subnets: [10.1.0.0/24, 10.1.9.0/24]"))
    with pytest.raises(ReloadRefused, match="were used before"):
        asyncio.run(gateway.reload())
    assert gateway.config is cfg
