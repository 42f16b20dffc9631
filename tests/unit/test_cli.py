"""The `sitelink` command as an admin meets it: exit statuses and one-line errors, never a traceback."""

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sitelink(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunnel.cli.main", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    for name in ("hq.yaml", "branch-1.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    (tmp_path / "keys").mkdir()
    # The example configs use IKEv2 with one PSK, the same content on both sides, mode 0600.
    psk = base64.b64encode(os.urandom(32)) + b"\n"
    for name in ("hq-branch1.psk", "branch1-hq.psk"):
        fd = os.open(tmp_path / "keys" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(psk)
    # Manual key files too, for the `sitelink manual-keys` tests (the configs no longer name them).
    result = sitelink("manual-keys", "keys/hq-branch1.keys", "keys/branch1-hq.keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_version() -> None:
    result = sitelink("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("sitelink 0.")


def test_check_accepts_the_example_configs(site: Path) -> None:
    for name in ("hq.yaml", "branch-1.yaml"):
        result = sitelink("check", name, cwd=site)
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout


def test_check_accepts_the_branch_network_examples(tmp_path: Path) -> None:
    """configs/branch-network: a hub with branches behind one NAT address, at `any`, spoke to spoke and a
    full tunnel; a branch that finds the hub by DNS name; the full-tunnel branch."""
    shutil.copytree(REPO / "configs" / "branch-network", tmp_path, dirs_exist_ok=True)
    (tmp_path / "keys").mkdir()
    for name in ("hub-branch1", "hub-branch2", "hub-branch3", "hub-branch4", "hub-kiosk", "branch2-hub",
                 "kiosk-hub"):
        fd = os.open(tmp_path / "keys" / f"{name}.psk", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(base64.b64encode(os.urandom(32)) + b"\n")
    for name in ("hub.yaml", "branch.yaml", "kiosk.yaml"):
        result = sitelink("check", name, cwd=tmp_path)
        assert result.returncode == 0 and "OK" in result.stdout, (name, result.stderr)


def test_check_lists_every_problem_with_position(site: Path) -> None:
    text = (site / "hq.yaml").read_text()
    text = text.replace("port: 4500", "port: 99999", 1).replace("name: branch1", "name: branch1\n    colour: red", 1)
    (site / "hq.yaml").write_text(text)
    result = sitelink("check", "hq.yaml", cwd=site)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("hq.yaml:")]
    assert len(lines) == 2, result.stderr
    assert any("gateway.listen.port" in line for line in lines) and any("colour" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_mirrored_keys_are_consistent(site: Path) -> None:
    from tunnel.config.keyfile import load_manual_keys

    hq = load_manual_keys(site / "keys/hq-branch1.keys", "t")
    br = load_manual_keys(site / "keys/branch1-hq.keys", "t")
    assert (hq.outbound, hq.inbound) == (br.inbound, br.outbound)
    assert (site / "keys/hq-branch1.keys").stat().st_mode & 0o777 == 0o600


def test_manual_keys_never_overwrite(site: Path) -> None:
    before = (site / "keys/hq-branch1.keys").read_bytes()
    result = sitelink("manual-keys", "keys/hq-branch1.keys", "keys/other.keys", cwd=site)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (site / "keys/hq-branch1.keys").read_bytes() == before


def test_up_refuses_a_readable_key_file_before_touching_the_system(site: Path) -> None:
    os.chmod(site / "keys/hq-branch1.psk", 0o644)
    result = sitelink("up", "hq.yaml", cwd=site)
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["up"], ["frobnicate"], ["check", "/nonexistent.yaml"], ["up", "/dev/null"]])
def test_bad_invocations_fail_cleanly(args: list[str]) -> None:
    result = sitelink(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip()


def test_secrets_never_reach_output(site: Path) -> None:
    psk = (site / "keys/hq-branch1.psk").read_text().strip()
    assert len(psk) >= 40
    # Damage the PSK so it is too short: the error must not echo what is left of it.
    (site / "keys/hq-branch1.psk").write_text(psk[:12] + "\n")
    result = sitelink("check", "hq.yaml", cwd=site)
    assert result.returncode == 2
    assert result.stderr.count("at least 16 bytes") == 1, result.stderr
    assert psk[:12] not in result.stderr + result.stdout


def test_json_log_lines() -> None:
    import json
    import logging

    from tunnel.cli.main import JsonLines

    record = logging.LogRecord("sitelink.gateway", logging.WARNING, __file__, 1, "tunnel %s: %d drops", ("b1", 3), None)
    entry = json.loads(JsonLines().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "sitelink.gateway"
    assert entry["message"] == "tunnel b1: 3 drops" and entry["time"][:2] == "20"


def test_reload_without_a_running_gateway_is_one_line(tmp_path: Path) -> None:
    result = sitelink("reload", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"sitelink: error: {tmp_path / 'none.sock'}: no such socket; is the gateway running?"


def test_the_company_pki_example_with_files_from_sitelink_pki(tmp_path: Path) -> None:
    """configs/company-pki/hq.yaml with every file made by the commands configs/README.md gives: two roots,
    an intermediate, HQ's two certificates, a CRL; then `sitelink check` passes and the credentials load
    (two certificates, the intermediate on the path, both roots in CERTREQ)."""
    shutil.copy(REPO / "configs" / "company-pki" / "hq.yaml", tmp_path / "hq.yaml")
    commands = [
        ("pki", "ca", "pki/ca-2024", "--name", "Acme Root CA 2024"),
        ("pki", "ca", "pki/ca-2026", "--name", "Acme Root CA 2026"),
        ("pki", "intermediate", "pki/emea", "--ca-dir", "pki/ca-2024", "--name", "Acme EMEA CA"),
        ("pki", "issue", "--ca-dir", "pki/emea", "--out", "pki/hq-2024", "--id", "hq.example"),
        ("pki", "issue", "--ca-dir", "pki/ca-2026", "--out", "pki/hq-2026", "--id", "hq.example"),
        ("pki", "issue", "--ca-dir", "pki/emea", "--out", "pki/branches", "--id", "branch7.example"),
        ("pki", "revoke", "--ca-dir", "pki/emea", "pki/branches/branch7.example.crt"),
    ]
    for argv in commands:
        result = sitelink(*argv, cwd=tmp_path)
        assert result.returncode == 0, (argv, result.stderr)
    (tmp_path / "keys").mkdir()
    for name in ("hq-lab", "hq-lab.next"):
        fd = os.open(tmp_path / "keys" / f"{name}.psk", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(base64.b64encode(os.urandom(32)) + b"\n")
    result = sitelink("check", "hq.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    from tunnel.app.credentials import cert_auth  # noqa: PLC0415
    from tunnel.config.loader import load_config  # noqa: PLC0415

    auth = cert_auth(load_config(tmp_path / "hq.yaml"))
    assert [len(c.chain) for c in auth.credentials] == [2, 1] and len(auth.ca_key_hashes) == 40
    assert auth.ocsp is not None and auth.ocsp.url == "http://ocsp.acme.example:8080/"
