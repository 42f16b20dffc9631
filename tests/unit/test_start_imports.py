"""`sitelink up` imports only what its configuration needs (issue 17: start-up within 200 ms).

A fresh interpreter loads a PSK gateway's configuration and the gateway module, as `sitelink up` does;
what it must not have imported is listed with the feature that needs it (their own tests, certificate
authentication, HA sync, workers and OCSP, show that each is still loaded when it is needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NOT_ON_A_PSK_START = {
    "cryptography.x509": "certificate authentication",
    "tunnel.ike.certs": "certificate authentication",
    "tunnel.app.credentials": "certificate authentication",
    "tunnel.config.pkifiles": "certificate authentication",
    "tunnel.app.hasync": "gateway.ha.sync",
    "tunnel.ike.handover": "gateway.ha.sync",
    "tunnel.app.workers": "gateway.workers > 1",
    "tunnel.drivers.ocsp_http": "OCSP",
}

PROBE = """
import json, sys
from tunnel.cli.main import main  # noqa: F401
from tunnel.app.gateway import Gateway  # noqa: F401
from tunnel.config.loader import load_config
load_config(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_loading(config: Path) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, timeout=60,
                         check=True)
    return set(json.loads(out.stdout))


def _psk_config(tmp_path: Path) -> Path:
    psk = tmp_path / "branch1.psk"
    psk.write_text("a-long-enough-pre-shared-key-for-the-test-0123456789\n")
    psk.chmod(0o600)
    config = tmp_path / "hq.yaml"
    config.write_text(f"""gateway:
  name: hq
  listen: {{address: 198.18.1.2, port: 4500}}
  tun: {{name: sl0, addresses: [10.1.0.1/32]}}
tunnels:
  - name: branch1
    peer: {{address: 198.18.2.2}}
    local_subnets: [10.1.0.0/24]
    remote_subnets: [10.2.0.0/24]
    ike: {{auth: psk, psk_file: {psk}, local_id: hq.example, remote_id: branch1.example}}
""")
    return config


def test_a_psk_gateway_starts_without_x509_ha_workers_or_ocsp(tmp_path: Path) -> None:
    loaded = _modules_after_loading(_psk_config(tmp_path))
    found = {m: why for m, why in NOT_ON_A_PSK_START.items() if m in loaded}
    assert not found, f"imported on a PSK gateway's start path (needed only for): {found}"
    assert "tunnel.ike.identity" in loaded and "pyroute2" in loaded  # the probe did load the start path
