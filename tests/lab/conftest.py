"""Shared setup for the namespace-lab tests (tests/lab).

Everything here is marked ``lab``. Missing privileges or kernel support skip
the tests locally but *fail* them when CI=true: the CI must never go green by
silently skipping the only tests that exercise real packets.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "netns-lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from netnslab import Topology, load_topology  # noqa: E402  (needs the sys.path entry above)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; mark only ours.
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.lab)


@lru_cache(maxsize=1)
def lab_unavailable_reason() -> str | None:
    """Why namespace labs cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool in ("ip", "nft", "tcpdump", "ping", "iperf3", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"slprobe{secrets.token_hex(3)}"  # unique; deleted right away
    try:
        add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if add.returncode != 0:
            return f"'ip netns add' does not work: {add.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(autouse=True)
def _require_lab_support() -> None:
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if _ci():
        pytest.fail(f"lab tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def strongswan_required() -> None:
    """For tests against strongSwan (`pytestmark = pytest.mark.usefixtures("strongswan_required")`): a
    failure in CI, where scripts/bootstrap installs it, a skip elsewhere."""
    from netnslab.strongswan import strongswan_installed  # noqa: PLC0415

    missing = strongswan_installed()
    if missing:
        if _ci():
            pytest.fail(f"{missing} (scripts/bootstrap installs it)", pytrace=False)
        pytest.skip(missing)


@pytest.fixture(scope="session")
def two_sites_topology() -> Topology:
    return load_topology(LAB_DIR / "topologies" / "two-sites.yaml")
