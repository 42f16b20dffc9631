"""The documented HA and scale-out examples (configs/ha, configs/scale-out) are valid and are what the
lab runs: sitelink loads them with the settings README describes, and the keepalived and BIRD files
are, comments aside, the ones tests/lab/test_ha_keepalived.py and test_scale_out_bgp.py generate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.unit.test_config_ike import write_file
from tunnel.config.loader import load_config
from tunnel.config.model import HaRole

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab.ha import keepalived_config  # noqa: E402
from netnslab.scaleout import bird_core_config, bird_hub_config  # noqa: E402

KEY = b"an-example-key-that-is-long-enough\n"


def copy(tmp_path: Path, name: str, keys: list[str]) -> Path:
    shutil.copy(REPO / "configs" / name, tmp_path / Path(name).name)
    (tmp_path / "keys").mkdir(exist_ok=True)
    for key in keys:
        write_file(tmp_path / "keys" / key, KEY)
    return tmp_path / Path(name).name


def significant(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_ha_example_loads(tmp_path: Path) -> None:
    config = load_config(copy(tmp_path, "ha/hq-a.yaml", ["ha-sync.key", "hq-branch1.psk"]))
    assert config.ha is not None and config.ha.role is HaRole.STANDBY and config.ha.sync is not None
    assert (str(config.ha.sync.local), str(config.ha.sync.peer), config.ha.sync.port) == ("10.1.0.2", "10.1.0.3", 4510)
    assert str(config.listen.address) == "198.18.1.2" and str(config.tun.addresses[0]) == "10.1.0.2/32"


def test_the_scale_out_examples_load(tmp_path: Path) -> None:
    hub = load_config(copy(tmp_path, "scale-out/hub1.yaml", ["branch1.psk", "branch2.psk"]))
    assert hub.announce is not None and hub.announce.table == 100
    assert all(t.ike is not None and t.ike.start.value == "respond" for t in hub.tunnels)
    branch = load_config(copy(tmp_path, "scale-out/branch1.yaml", ["branch1.psk"]))
    assert [str(a) for a in branch.tunnels[0].peer.addresses] == ["198.18.1.2", "198.18.2.2", "198.18.3.2"]
    ike = branch.tunnels[0].ike
    assert ike is not None and (ike.dpd_delay, ike.retransmit_timeout, ike.retransmit_tries) == (1, 0.5, 2)


def test_the_keepalived_example_is_what_the_lab_runs() -> None:
    generated = keepalived_config("hq_a", ["/usr/local/bin/sitelink"], Path("/run/sitelink/hq.sock"), "wan0",
                                  "lan0", "198.18.1.2/24", "10.1.0.1/24", 150)
    documented = significant((REPO / "configs/ha/keepalived.conf").read_text())
    assert [line for line in documented if line.strip() != "enable_script_security"] == significant(generated)
    assert "    enable_script_security" in documented  # (the lab's venv lives under /tmp: it cannot have it)


def test_the_bird_examples_are_what_the_lab_runs_and_parse(tmp_path: Path) -> None:
    hub = REPO / "configs/scale-out/bird-hub.conf"
    core = REPO / "configs/scale-out/bird-core.conf"
    assert significant(hub.read_text()) == significant(bird_hub_config("10.254.1.2", 65001, "10.254.1.2", "10.254.1.1"))
    sessions = [(f"10.254.{k}.1", f"10.254.{k}.2", 65000 + k) for k in (1, 2, 3)]
    assert significant(core.read_text()) == significant(bird_core_config("10.254.0.1", sessions))
    for path in (hub, core):
        cp = subprocess.run(["/usr/sbin/bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
