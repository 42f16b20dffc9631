"""IKEv2 part of the config: ike:, gateway.ike_port, gateway.pki, PSK files and proposal strings.

Every problem as `file:line:col: path: message`, never a default for a bad value, never a PSK in a message.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_config_loader import problems as loader_problems  # noqa: E402
from tests.unit.test_config_loader import write
from tunnel.config.keyfile import write_manual_key_pair
from tunnel.config.loader import load_config
from tunnel.config.model import Ike, Ocsp, Pki, PkiCredential, Revocation, StartMode
from tunnel.config.proposals import parse_esp_proposal, parse_ike_proposal
from tunnel.errors import ConfigError
from tunnel.ike.constants import DhGroup, EncrId, Esn, PrfId
from tunnel.ike.proposal import EspSuite, IkeSuite
from tunnel.secret import Secret

REPO = Path(__file__).resolve().parents[2]
PSK = b"0123456789abcdefSECRETPSKTEXT-xyz"  # 33 bytes; never expected in any message

# Line numbers and columns below are asserted against this text; edit with care.
GOOD = """\
gateway:
  name: hq
  listen:
    address: 198.18.1.2
tunnels:
  - name: branch1
    peer:
      address: 198.18.2.2
    local_subnets: [10.1.0.0/24]
    remote_subnets: [10.2.0.0/24]
    ike:
      auth: psk
      psk_file: keys/b1.psk
      local_id: gw.hq.example
      remote_id: gw.branch1.example
"""

SECOND_TUNNEL = """\
  - name: branch2
    peer:
      address: 198.18.3.2
    local_subnets: [10.1.0.0/24]
    remote_subnets: [10.3.0.0/24]
    ike:
      auth: psk
      psk_file: keys/b1.psk
      local_id: gw.hq.example
      remote_id: gw.branch2.example
"""

PKI = """\
  pki:
    ca: pki/ca.crt
    certificate: pki/hq.crt
    private_key: pki/hq.key
"""


def write_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    write_file(tmp_path / "keys" / "b1.psk", PSK + b"\n")
    write_file(tmp_path / "pki" / "ca.crt", b"-----BEGIN CERTIFICATE-----\n", 0o644)
    write_file(tmp_path / "pki" / "hq.crt", b"-----BEGIN CERTIFICATE-----\n", 0o644)
    write_file(tmp_path / "pki" / "hq.key", b"-----BEGIN PRIVATE KEY-----\n")
    return tmp_path


def problems(path: Path) -> list[str]:
    found = loader_problems(path)
    assert not any(PSK[:8].decode() in p for p in found)
    return found


def cert_variant(text: str = GOOD) -> str:
    return text.replace("auth: psk\n      psk_file: keys/b1.psk\n", "auth: cert\n")


# -- good configs ----------------------------------------------------------------------------------------


def test_psk_tunnel_loads_with_defaults(site: Path) -> None:
    config = load_config(write(site, GOOD))
    assert config.ike_port == 500 and config.pki is None
    (tunnel,) = config.tunnels
    assert tunnel.manual_keys is None
    default_ike = IkeSuite(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256, DhGroup.CURVE_25519)
    assert tunnel.ike == Ike(auth="psk", local_id="gw.hq.example", remote_id="gw.branch1.example", psk=Secret(PSK),
                             ike_proposals=(default_ike,),
                             esp_proposals=(EspSuite(EncrId.AES_GCM_16, 256, Esn.NO_ESN, None),),
                             start=StartMode.INITIATE)


def test_every_ike_field_given(site: Path) -> None:
    text = GOOD.replace("  listen:\n", "  ike_port: 1500\n  listen:\n") + (
        "      ike_proposals: [aes128gcm16-prfsha512-modp2048, aes256gcm16-prfsha384-ecp256]\n"
        "      esp_proposals: [aes256gcm16-x25519, aes192gcm16-noesn]\n"
        "      start: on-demand\n")
    config = load_config(write(site, text))
    assert config.ike_port == 1500
    ike = config.tunnels[0].ike
    assert ike.ike_proposals == (IkeSuite(EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_512, DhGroup.MODP_2048),
                                 IkeSuite(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384, DhGroup.ECP_256))
    assert ike.esp_proposals == (EspSuite(EncrId.AES_GCM_16, 256, Esn.NO_ESN, DhGroup.CURVE_25519),
                                 EspSuite(EncrId.AES_GCM_16, 192, Esn.NO_ESN, None))
    assert ike.start is StartMode.ON_DEMAND


@pytest.mark.parametrize("start", list(StartMode))
def test_every_start_mode(site: Path, start: StartMode) -> None:
    config = load_config(write(site, GOOD + f"      start: {start.value}\n"))
    assert config.tunnels[0].ike.start is start


def test_company_pki_settings(site: Path) -> None:
    """CA list (rollover), intermediates, a second certificate, CRLs, soft fail and RSA-PSS."""
    for name in ("ca2.crt", "sub.crt", "new.crt", "a.crl", "b.crl"):
        write_file(site / "pki" / name, b"-----BEGIN X-----\n", 0o644)
    write_file(site / "pki" / "new.key", b"-----BEGIN PRIVATE KEY-----\n")
    pki = PKI.replace("    ca: pki/ca.crt\n", "    ca: [pki/ca.crt, pki/ca2.crt]\n") + (
        "    intermediates: [pki/sub.crt]\n"
        "    alternates:\n      - {certificate: pki/new.crt, private_key: pki/new.key}\n"
        "    crl: [pki/a.crl, pki/b.crl]\n    revocation: soft\n    rsa_pss: true\n"
        "    ocsp: {url: 'http://ocsp.acme.test:8080/', timeout: 3}\n")
    config = load_config(write(site, cert_variant(GOOD.replace("  listen:\n", pki + "  listen:\n"))))
    p = site / "pki"
    assert config.pki == Pki((p / "ca.crt", p / "ca2.crt"), p / "hq.crt", p / "hq.key", (p / "sub.crt",),
                             (PkiCredential(p / "new.crt", p / "new.key"),), (p / "a.crl", p / "b.crl"),
                             revocation=Revocation.SOFT, rsa_pss=True, ocsp=Ocsp("http://ocsp.acme.test:8080/", 3))


@pytest.mark.parametrize("extra,expected", [
    ("    revocation: maybe\n", "gateway.pki.revocation: 'maybe' is not one of hard, soft"),
    ("    ocsp: {url: 'https://ocsp.acme.test/'}\n", "gateway.pki.ocsp.url: 'https://ocsp.acme.test/' is not an "
                                                   "http:// URL"),
    ("    crl: [pki/none.crl]\n", "gateway.pki.crl[0]: CRL file {dir}/pki/none.crl does not exist"),
    ("    alternates:\n      - {certificate: pki/hq.crt}\n", "gateway.pki.alternates[0].private_key: missing"),
])
def test_company_pki_mistakes(site: Path, extra: str, expected: str) -> None:
    found = problems(write(site, cert_variant(GOOD.replace("  listen:\n", PKI + extra + "  listen:\n"))))
    assert any(expected.format(dir=site) in p for p in found), found


def test_cert_tunnel_with_pki(site: Path) -> None:
    text = cert_variant(GOOD.replace("  listen:\n", PKI + "  listen:\n"))
    config = load_config(write(site, text))
    assert config.pki == Pki((site / "pki/ca.crt",), site / "pki/hq.crt", site / "pki/hq.key")
    assert config.tunnels[0].ike.auth == "cert" and config.tunnels[0].ike.psk is None


def test_pki_without_cert_tunnels_is_accepted(site: Path) -> None:
    assert load_config(write(site, GOOD.replace("  listen:\n", PKI + "  listen:\n"))).pki is not None


@pytest.mark.parametrize("ident", ["198.18.1.2", "'fd00::1'", "'@gw.hq.example'", "ops@hq.example",
                                   "'CN=gw1,O=Acme'", "'@#0a1b2c'"])
def test_identity_forms(site: Path, ident: str) -> None:
    config = load_config(write(site, GOOD.replace("local_id: gw.hq.example", f"local_id: {ident}")))
    assert config.tunnels[0].ike.local_id == yaml.safe_load(ident)


def test_psk_file_newline_handling(site: Path) -> None:
    for content in (PSK, PSK + b"\n", PSK + b"\r\n"):
        write_file(site / "keys" / "b1.psk", content)
        assert load_config(write(site, GOOD)).tunnels[0].ike.psk == Secret(PSK)
    write_file(site / "keys" / "b1.psk", b"x" * 16)  # exactly the minimum
    assert load_config(write(site, GOOD)).tunnels[0].ike.psk == Secret(b"x" * 16)


def test_repr_of_config_shows_no_psk(site: Path) -> None:
    config = load_config(write(site, GOOD))
    text = repr(config) + str(config)
    assert "Secret(<33 bytes redacted>)" in text
    assert PSK.decode() not in text and PSK[:8].decode() not in text


def test_manual_keys_tunnel_still_loads_next_to_an_ike_tunnel(site: Path) -> None:
    write_manual_key_pair(site / "keys/m.keys", site / "keys/m-peer.keys")
    manual = SECOND_TUNNEL[:SECOND_TUNNEL.index("    ike:")] + "    manual_keys: keys/m.keys\n"
    config = load_config(write(site, GOOD + manual))
    assert config.tunnels[0].ike is not None and config.tunnels[1].ike is None
    assert config.tunnels[1].manual_keys.path == site / "keys/m.keys"


def test_example_configs_cert_variant_loads(tmp_path: Path) -> None:
    """The commented-out certificate variant of configs/hq.yaml: uncomment gateway.pki and `auth: cert`."""
    text = (REPO / "configs" / "hq.yaml").read_text()
    pki_start = text.index("  # pki:\n")
    pki_end = text.index("\n\n", pki_start)
    pki = "\n".join(line.replace("  # ", "  ", 1) for line in text[pki_start:pki_end].splitlines())
    text = text[:pki_start] + pki + text[pki_end:]
    ike, cert = text.index("    ike:\n"), text.index("    # ike:\n")
    cert_end = text.index("    # Manual-keys variant")
    cert_block = "\n".join(line.replace("    # ", "    ", 1) for line in text[cert:cert_end].splitlines())
    (tmp_path / "hq.yaml").write_text(text[:ike] + cert_block + "\n" + text[cert_end:])
    write_file(tmp_path / "pki" / "ca.crt", b"x", 0o644)
    write_file(tmp_path / "pki" / "gw.hq.example.crt", b"x", 0o644)
    write_file(tmp_path / "pki" / "gw.hq.example.key", b"x")
    config = load_config(tmp_path / "hq.yaml")
    assert config.pki.private_key == tmp_path / "pki" / "gw.hq.example.key"
    assert config.tunnels[0].ike.auth == "cert"


# -- one problem each, at its exact place ----------------------------------------------------------------

IDENTITY_HINT = "; expected a host name (gw.example), IP address, user@domain or a DN (CN=gw,O=Acme)"
ESP_ALLOWED = "allowed: noesn, x25519, curve25519, ecp256, ecp384, modp2048, modp3072"

CASES = [
    # (id, old, new, expected problem)
    ("bad auth", "auth: psk", "auth: password",
     "C:12:13: tunnels[0].ike.auth: 'password' is not one of psk, cert"),
    ("psk without psk_file", "      psk_file: keys/b1.psk\n", "",
     "C:12:7: tunnels[0].ike.psk_file: missing required key (auth: psk reads the pre-shared key from this file)"),
    ("missing local_id", "      local_id: gw.hq.example\n", "",
     "C:12:7: tunnels[0].ike.local_id: missing required key"),
    ("unknown ike key", "      psk_file:", "      pks_file: x\n      psk_file:",
     "C:13:7: tunnels[0].ike.pks_file: unknown key; did you mean 'psk_file'?"),
    ("bad local_id", "local_id: gw.hq.example", "local_id: gw..hq",
     "C:14:17: tunnels[0].ike.local_id: identity 'gw..hq' is not a host name, IP address, email or DN"
     + IDENTITY_HINT),
    ("bad DN remote_id", "remote_id: gw.branch1.example", "remote_id: 'foo=bar'",
     "C:15:18: tunnels[0].ike.remote_id: identity 'foo=bar' is not a distinguished name (RFC 4514)" + IDENTITY_HINT),
    ("non-ASCII id", "remote_id: gw.branch1.example", "remote_id: gw.bränch1.example",
     "C:15:18: tunnels[0].ike.remote_id: identity 'gw.bränch1.example': a host name must be ASCII (use its xn-- "
     "form)" + IDENTITY_HINT),
    ("list id", "remote_id: gw.branch1.example", "remote_id: [gw.branch1.example]",
     "C:15:18: tunnels[0].ike.remote_id: expected an identity (host name, IP address, user@domain or DN), "
     "got a list"),
    ("bad start", "remote_id: gw.branch1.example\n", "remote_id: gw.branch1.example\n      start: now\n",
     "C:16:14: tunnels[0].ike.start: 'now' is not one of initiate, on-demand, respond"),
    ("unknown dh", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n"
     "      ike_proposals: [aes256gcm16-prfsha256-x25519, aes256gcm16-prfsha256-modp1024]\n",
     "C:16:53: tunnels[0].ike.ike_proposals[1]: IKE proposal 'aes256gcm16-prfsha256-modp1024': unknown DH group "
     "'modp1024'; allowed: x25519, curve25519, ecp256, ecp384, modp2048, modp3072"),
    ("ike proposal missing part", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n      ike_proposals: [aes256gcm16-prfsha256]\n",
     "C:16:23: tunnels[0].ike.ike_proposals[0]: IKE proposal 'aes256gcm16-prfsha256' has 2 part(s); it must be "
     "encryption-prf-dh, e.g. aes256gcm16-prfsha256-x25519 (every part is required)"),
    ("empty proposals", "remote_id: gw.branch1.example\n", "remote_id: gw.branch1.example\n      ike_proposals: []\n",
     "C:16:22: tunnels[0].ike.ike_proposals: must not be empty"),
    ("proposal not a list", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n      esp_proposals: aes256gcm16\n",
     "C:16:22: tunnels[0].ike.esp_proposals: expected a list, got a string"),
    ("duplicate proposal", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n      ike_proposals: [aes256gcm16-prfsha256-x25519, "
     "aes256gcm16-prfsha256-curve25519]\n",
     "C:16:53: tunnels[0].ike.ike_proposals[1]: same proposal as tunnels[0].ike.ike_proposals[0]"),
    ("esn refused", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n      esp_proposals: [aes256gcm16-esn]\n",
     "C:16:23: tunnels[0].ike.esp_proposals[0]: ESP proposal 'aes256gcm16-esn': extended sequence numbers (esn) "
     "are not implemented yet; leave the part out or write noesn"),
    ("esp integrity", "remote_id: gw.branch1.example\n",
     "remote_id: gw.branch1.example\n      esp_proposals: [aes256gcm16, aes256-sha256]\n",
     "C:16:36: tunnels[0].ike.esp_proposals[1]: ESP proposal 'aes256-sha256': unknown encryption algorithm "
     "'aes256'; allowed: aes128gcm16, aes192gcm16, aes256gcm16 (sitelink implements AES-GCM with a 16-byte ICV "
     "only)"),
    ("int proposal", "remote_id: gw.branch1.example\n", "remote_id: gw.branch1.example\n      esp_proposals: [5]\n",
     "C:16:23: tunnels[0].ike.esp_proposals[0]: expected a proposal string, got an integer (quote it: '5')"),
    ("ike not a mapping", "    ike:\n      auth: psk\n      psk_file: keys/b1.psk\n      local_id: gw.hq.example\n"
     "      remote_id: gw.branch1.example\n", "    ike: psk\n",
     "C:11:10: tunnels[0].ike: expected a mapping, got a string"),
    ("neither ike nor manual_keys", GOOD[GOOD.index("    ike:"):], "",
     "C:6:5: tunnels[0]: has neither 'ike' nor 'manual_keys'; give exactly one: ike (IKEv2, the normal case) or "
     "manual_keys (static keys, for testing only)"),
    ("cert without pki", "auth: psk\n      psk_file: keys/b1.psk\n", "auth: cert\n",
     "C:12:13: tunnels[0].ike.auth: auth: cert needs gateway.pki (ca, certificate and private_key of this gateway)"),
    ("ike_port equals listen.port", "  listen:\n", "  ike_port: 4500\n  listen:\n",
     "C:3:13: gateway.ike_port: 4500 is also gateway.listen.port; IKE_SA_INIT needs its own port (the rest of IKE "
     "and ESP share listen.port)"),
    ("listen.port equals default ike_port", "    address: 198.18.1.2\n", "    address: 198.18.1.2\n    port: 500\n",
     "C:5:11: gateway.listen.port: 500 is the IKE port (gateway.ike_port, default 500); choose another listen "
     "port or set a different ike_port"),
    ("ike_port out of range", "  listen:\n", "  ike_port: 0\n  listen:\n",
     "C:3:13: gateway.ike_port: '0' is out of range 1..65535"),
    ("pki missing file", "  listen:\n", PKI.replace("pki/hq.crt", "pki/none.crt") + "  listen:\n",
     "C:5:18: gateway.pki.certificate: certificate file {dir}/pki/none.crt does not exist"),
    ("pki is a directory", "  listen:\n", PKI.replace("pki/ca.crt", "pki") + "  listen:\n",
     "C:4:9: gateway.pki.ca: CA certificate file {dir}/pki is a directory, not a file"),
    ("pki missing key", "  listen:\n", PKI.replace("    private_key: pki/hq.key\n", "") + "  listen:\n",
     "C:4:5: gateway.pki.private_key: missing required key"),
    ("pki empty path", "  listen:\n", PKI.replace("pki/ca.crt", "''") + "  listen:\n",
     "C:4:9: gateway.pki.ca: must not be empty"),
    ("psk_file empty path", "psk_file: keys/b1.psk", "psk_file: ''",
     "C:13:17: tunnels[0].ike.psk_file: must not be empty"),
    ("psk file missing", "psk_file: keys/b1.psk", "psk_file: keys/none.psk",
     "C:13:17: tunnels[0].ike.psk_file: PSK file {dir}/keys/none.psk does not exist"),
    ("psk file is a directory", "psk_file: keys/b1.psk", "psk_file: keys",
     "C:13:17: tunnels[0].ike.psk_file: PSK file {dir}/keys is a directory, not a file"),
]


@pytest.mark.parametrize("old,new,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_reported_at_its_node(site: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert problems(write(site, GOOD.replace(old, new, 1))) == [expected.format(dir=site)]


def test_both_ike_and_manual_keys(site: Path) -> None:
    write_manual_key_pair(site / "keys/m.keys", site / "keys/m-peer.keys")
    assert problems(write(site, GOOD + "    manual_keys: keys/m.keys\n")) == [
        "C:6:5: tunnels[0]: has both 'ike' and 'manual_keys'; give exactly one: ike (IKEv2, the normal case) or "
        "manual_keys (static keys, for testing only)"
    ]


def test_psk_file_with_auth_cert_is_refused_and_not_read(site: Path) -> None:
    text = GOOD.replace("  listen:\n", PKI + "  listen:\n").replace("auth: psk", "auth: cert")
    text = text.replace("keys/b1.psk", "keys/none.psk")  # not read: only the misplaced key is reported
    assert problems(write(site, text)) == [
        "C:17:17: tunnels[0].ike.psk_file: only for auth: psk; auth: cert uses the certificate and key in gateway.pki"
    ]


def test_pki_private_key_too_open(site: Path) -> None:
    os.chmod(site / "pki" / "hq.key", 0o640)
    text = cert_variant(GOOD.replace("  listen:\n", PKI + "  listen:\n"))
    assert problems(write(site, text)) == [
        f"C:6:18: gateway.pki.private_key: private key file {site}/pki/hq.key has mode 0640: group or others may "
        f"read or write it; restrict it with: chmod 600 {site}/pki/hq.key"
    ]


def test_pki_certificates_may_be_world_readable_but_must_be_files(site: Path) -> None:
    os.chmod(site / "pki" / "ca.crt", 0o644)
    os.mkfifo(site / "pki" / "fifo.crt")
    text = cert_variant(GOOD.replace("  listen:\n", PKI.replace("pki/hq.crt", "pki/fifo.crt") + "  listen:\n"))
    assert problems(write(site, text)) == [
        f"C:5:18: gateway.pki.certificate: certificate file {site}/pki/fifo.crt is not a regular file"
    ]


def test_cert_without_pki_with_broken_pki_reports_only_the_pki(site: Path) -> None:
    text = cert_variant(GOOD.replace("  listen:\n", "  pki: pki/ca.crt\n  listen:\n"))
    assert problems(write(site, text)) == ["C:3:8: gateway.pki: expected a mapping, got a string"]


# -- PSK files --------------------------------------------------------------------------------------------------

PSK_AT = "C:13:17: tunnels[0].ike.psk_file: PSK file {file}"
RECIPE = "umask 077; head -c 32 /dev/urandom | base64 > {file}"


@pytest.mark.parametrize("content,expected", [
    (b"short-psk\n", "holds a 9-byte PSK; at least 16 bytes are required, since a short PSK can be guessed offline "
                     "from one captured IKE_AUTH (RFC 7296 §2.15); create one with: " + RECIPE),
    (b"0123456789abcde", "holds a 15-byte PSK; at least 16 bytes are required, since a short PSK can be guessed "
                         "offline from one captured IKE_AUTH (RFC 7296 §2.15); create one with: " + RECIPE),
    (b"", "is empty; create a PSK with: " + RECIPE),
    (b"\n", "is empty; create a PSK with: " + RECIPE),
    (PSK + b"\n" + PSK + b"\n", "holds more than one line; it must hold the PSK alone on one line"),
    (PSK + b"\n\n", "holds more than one line; it must hold the PSK alone on one line"),
    (b"x" * 5000, "is larger than 4096 bytes"),
])
def test_bad_psk_file_content(site: Path, content: bytes, expected: str) -> None:
    file = site / "keys" / "b1.psk"
    write_file(file, content)
    found = problems(write(site, GOOD))
    assert found == [(PSK_AT + ": " + expected).replace("PSK file {file}: ", "PSK file {file} ").format(file=file)]
    if content.strip():
        assert content.strip()[:9].decode() not in "".join(found)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_psk_file_too_open(site: Path, mode: int) -> None:
    file = site / "keys" / "b1.psk"
    os.chmod(file, mode)
    assert problems(write(site, GOOD)) == [
        f"C:13:17: tunnels[0].ike.psk_file: PSK file {file} has mode {mode:04o}: group or others may read or write "
        f"it; restrict it with: chmod 600 {file}"
    ]


def test_psk_file_relative_to_config_directory(site: Path, monkeypatch) -> None:
    write(site, GOOD)
    monkeypatch.chdir(site.parent)
    assert load_config(Path(site.name) / "config.yaml").tunnels[0].ike.psk == Secret(PSK)


def test_two_tunnels_may_share_a_psk_file(site: Path) -> None:
    config = load_config(write(site, GOOD + SECOND_TUNNEL))
    assert config.tunnels[0].ike.psk == config.tunnels[1].ike.psk


# -- cross-tunnel checks ------------------------------------------------------------------------------------------


def test_duplicate_remote_id_across_tunnels(site: Path) -> None:
    # `@gw.branch1.example` is the same ID_FQDN as `gw.branch1.example`.
    second = SECOND_TUNNEL.replace("remote_id: gw.branch2.example", "remote_id: '@gw.branch1.example'")
    assert problems(write(site, GOOD + second)) == [
        "C:25:18: tunnels[1].ike.remote_id: '@gw.branch1.example' is the same identity as tunnels[0].ike.remote_id; "
        "the IKE responder identifies peers by their remote_id, so each must be unique"
    ]


def test_two_ike_tunnels_may_share_a_peer_address(site: Path) -> None:
    """Branches behind one NAT address: the responder tells them apart by their (unique) remote_id."""
    config = load_config(write(site, GOOD + SECOND_TUNNEL.replace("198.18.3.2", "198.18.2.2")))
    assert config.tunnels[0].peer.address == config.tunnels[1].peer.address


def test_peer_address_any_responds_and_dns_name_is_kept(site: Path) -> None:
    text = GOOD.replace("address: 198.18.2.2", "address: any") + SECOND_TUNNEL.replace(
        "address: 198.18.3.2", "address: Branch2.Example.")
    config = load_config(write(site, text))
    first, second = config.tunnels
    assert first.peer.is_any and first.peer.address is None and str(first.peer) == "any"
    assert first.ike is not None and first.ike.start is StartMode.RESPOND  # nowhere to initiate to
    assert second.peer.host == "branch2.example" and second.peer.address is None and not second.peer.is_any
    assert second.ike is not None and second.ike.start is StartMode.INITIATE


def test_peer_address_any_refuses_initiating(site: Path) -> None:
    text = GOOD.replace("address: 198.18.2.2", "address: any") + "      start: on-demand\n"
    assert problems(write(site, text)) == [
        "C:16:14: tunnels[0].ike.start: start: on-demand needs an address to initiate to, and peer.address is any "
        "(the tunnel only responds); use start: respond or give the peer's address or DNS name"
    ]


def test_full_tunnel_and_summary_subnets_may_contain_the_local_ones(site: Path) -> None:
    """A branch sending everything to HQ (0.0.0.0/0), HQ's side of it, a corporate summary route."""
    branch = (GOOD.replace("remote_subnets: [10.2.0.0/24]", "remote_subnets: [0.0.0.0/0, '::/0']")
              + SECOND_TUNNEL)  # and a direct tunnel to another branch: the longer prefix wins
    config = load_config(write(site, branch))
    assert [str(n) for n in config.tunnels[0].remote_subnets] == ["0.0.0.0/0", "::/0"]
    hub = GOOD.replace("local_subnets: [10.1.0.0/24]", "local_subnets: [0.0.0.0/0]")
    assert [str(n) for n in load_config(write(site, hub)).tunnels[0].local_subnets] == ["0.0.0.0/0"]
    summary = GOOD.replace("remote_subnets: [10.2.0.0/24]", "remote_subnets: [10.0.0.0/8]")
    assert [str(n) for n in load_config(write(site, summary)).tunnels[0].remote_subnets] == ["10.0.0.0/8"]
    two_defaults = branch.replace("remote_subnets: [10.3.0.0/24]", "remote_subnets: [0.0.0.0/0]")
    assert problems(write(site, two_defaults)) == [
        "C:20:22: tunnels[1].remote_subnets[0]: 0.0.0.0/0 overlaps 0.0.0.0/0 (tunnels[0].remote_subnets[0]); "
        "a packet must select exactly one tunnel"]


def test_manual_keys_tunnel_may_share_a_peer_address_with_an_ike_tunnel(site: Path) -> None:
    write_manual_key_pair(site / "keys/m.keys", site / "keys/m-peer.keys")
    manual = SECOND_TUNNEL[:SECOND_TUNNEL.index("    ike:")].replace("198.18.3.2", "198.18.2.2")
    config = load_config(write(site, GOOD + manual + "    manual_keys: keys/m.keys\n"))
    assert config.tunnels[0].peer.address == config.tunnels[1].peer.address == ipaddress.ip_address("198.18.2.2")


def test_all_problems_reported_at_once_in_file_order(site: Path) -> None:
    text = (GOOD.replace("  listen:\n", "  ike_port: 70000\n  listen:\n").replace("auth: psk", "auth: cert")
            .replace("local_id: gw.hq.example", "local_id: 'CN='")
            + "      esp_proposals: [aes256gcm16-esn]\n")
    assert problems(write(site, text)) == [
        "C:3:13: gateway.ike_port: '70000' is out of range 1..65535",
        "C:13:13: tunnels[0].ike.auth: auth: cert needs gateway.pki (ca, certificate and private_key of this gateway)",
        "C:14:17: tunnels[0].ike.psk_file: only for auth: psk; auth: cert uses the certificate and key in gateway.pki",
        "C:15:17: tunnels[0].ike.local_id: identity 'CN=' is not a distinguished name (RFC 4514): Attribute's length "
        "must be >= 1 and <= 64, but it was 0" + IDENTITY_HINT,
        "C:17:23: tunnels[0].ike.esp_proposals[0]: ESP proposal 'aes256gcm16-esn': extended sequence numbers (esn) "
        "are not implemented yet; leave the part out or write noesn",
    ]


# -- proposal strings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,suite", [
    ("aes256gcm16-prfsha256-x25519", IkeSuite()),
    ("aes256gcm16-prfsha256-curve25519", IkeSuite()),
    ("aes128gcm16-prfsha384-ecp256", IkeSuite(EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_384, DhGroup.ECP_256)),
    ("aes192gcm16-prfsha512-modp2048", IkeSuite(EncrId.AES_GCM_16, 192, PrfId.HMAC_SHA2_512, DhGroup.MODP_2048)),
])
def test_parse_ike_proposal(text: str, suite: IkeSuite) -> None:
    assert parse_ike_proposal(text) == suite


@pytest.mark.parametrize("text,message", [
    ("", "IKE proposal must not be empty; it must be encryption-prf-dh, e.g. aes256gcm16-prfsha256-x25519"),
    ("aes256gcm16-prfsha256-x25519-ecp256", "IKE proposal 'aes256gcm16-prfsha256-x25519-ecp256' has 4 part(s); it "
     "must be encryption-prf-dh, e.g. aes256gcm16-prfsha256-x25519 (every part is required)"),
    ("aes256gcm16--x25519", "IKE proposal 'aes256gcm16--x25519' has an empty part; it must be encryption-prf-dh, "
     "e.g. aes256gcm16-prfsha256-x25519"),
    ("aes256cbc-prfsha256-x25519", "IKE proposal 'aes256cbc-prfsha256-x25519': unknown encryption algorithm "
     "'aes256cbc'; allowed: aes128gcm16, aes192gcm16, aes256gcm16 (sitelink implements AES-GCM with a 16-byte "
     "ICV only)"),
    ("aes256gcm16-prfsha1-x25519", "IKE proposal 'aes256gcm16-prfsha1-x25519': unknown PRF 'prfsha1'; allowed: "
     "prfsha256, prfsha384, prfsha512"),
    ("aes256gcm16-x25519-prfsha256", "IKE proposal 'aes256gcm16-x25519-prfsha256': 'x25519' is a DH group where "
     "the PRF belongs; the order is encryption-prf-dh, e.g. aes256gcm16-prfsha256-x25519"),
    ("AES256GCM16-prfsha256-x25519", "IKE proposal 'AES256GCM16-prfsha256-x25519': unknown encryption algorithm "
     "'AES256GCM16'; allowed: aes128gcm16, aes192gcm16, aes256gcm16 (sitelink implements AES-GCM with a 16-byte "
     "ICV only)"),
])
def test_bad_ike_proposal(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ike_proposal(text)
    assert str(info.value) == message


@pytest.mark.parametrize("text,suite", [
    ("aes256gcm16", EspSuite()),
    ("aes256gcm16-noesn", EspSuite()),
    ("aes128gcm16", EspSuite(EncrId.AES_GCM_16, 128, Esn.NO_ESN, None)),
    ("aes256gcm16-x25519", EspSuite(dh=DhGroup.CURVE_25519)),
    ("aes192gcm16-noesn-ecp256", EspSuite(EncrId.AES_GCM_16, 192, Esn.NO_ESN, DhGroup.ECP_256)),
    ("aes256gcm16-modp2048-noesn", EspSuite(dh=DhGroup.MODP_2048)),
])
def test_parse_esp_proposal(text: str, suite: EspSuite) -> None:
    assert parse_esp_proposal(text) == suite


@pytest.mark.parametrize("text,message", [
    ("aes256gcm16-esn", "ESP proposal 'aes256gcm16-esn': extended sequence numbers (esn) are not implemented yet; "
     "leave the part out or write noesn"),
    ("aes256gcm16-sha256", f"ESP proposal 'aes256gcm16-sha256': unknown part 'sha256' after the encryption "
     f"algorithm; {ESP_ALLOWED}"),
    ("aes256gcm16-prfsha256", "ESP proposal 'aes256gcm16-prfsha256': 'prfsha256' is a PRF, which ESP does not use; "
     "write encryption[-noesn][-dh], e.g. aes256gcm16 or aes256gcm16-x25519"),
    ("aes256gcm16-x25519-ecp256", "ESP proposal 'aes256gcm16-x25519-ecp256' names more than one DH group; give one "
     "per proposal and list alternatives as separate proposals"),
    ("aes256gcm16-noesn-noesn", "ESP proposal 'aes256gcm16-noesn-noesn' names noesn twice"),
    ("x25519", "ESP proposal 'x25519': 'x25519' is a DH group where the encryption algorithm belongs; the order is "
     "encryption[-noesn][-dh], e.g. aes256gcm16 or aes256gcm16-x25519"),
    ("aes256gcm16-", "ESP proposal 'aes256gcm16-' has an empty part; it must be encryption[-noesn][-dh], e.g. "
     "aes256gcm16 or aes256gcm16-x25519"),
    (" ", "ESP proposal must not be empty; it must be encryption[-noesn][-dh], e.g. aes256gcm16 or "
     "aes256gcm16-x25519"),
])
def test_bad_esp_proposal(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_esp_proposal(text)
    assert str(info.value) == message


def test_long_proposal_is_shortened_in_messages() -> None:
    with pytest.raises(ValueError) as info:
        parse_ike_proposal("x" * 500)
    assert len(str(info.value)) < 300


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_proposal_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_ike_proposal, parse_esp_proposal):
        try:
            parse(text)
        except ValueError as exc:
            assert str(exc)


# -- never a traceback --------------------------------------------------------------------------------------------

IKE_WORDS = ["gateway", "tunnels", "name", "listen", "address", "peer", "local_subnets", "remote_subnets", "ike",
             "auth", "psk_file", "local_id", "remote_id", "ike_proposals", "esp_proposals", "start", "ike_port", "pki",
             "ca", "certificate", "private_key", "manual_keys"]
IKE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20),
    st.sampled_from(["psk", "cert", "keys/b1.psk", "pki/ca.crt", "pki/hq.key", "gw.hq.example", "CN=", "@#",
                     "aes256gcm16-prfsha256-x25519", "aes256gcm16-esn", "on-demand", "10.1.0.0/24", "198.18.2.2"]),
)
IKE_DOCS = st.recursive(
    IKE_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(IKE_WORDS), children, max_size=6)),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    write_file(directory / "keys" / "b1.psk", PSK)
    write_file(directory / "pki" / "ca.crt", b"x", 0o644)
    write_file(directory / "pki" / "hq.key", b"x", 0o644)
    return directory


@settings(max_examples=300, deadline=None)
@given(document=IKE_DOCS)
def test_near_schema_ike_documents_only_raise_config_error(fuzz_dir: Path, document: object) -> None:
    path = fuzz_dir / "fuzz.yaml"
    path.write_bytes(yaml.safe_dump(document, allow_unicode=True).encode())
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems)
        assert not any(PSK[:8].decode() in p for p in exc.problems)


def test_example_configs_use_ike_with_psk(tmp_path: Path) -> None:
    for name in ("hq.yaml", "branch-1.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    write_file(tmp_path / "keys" / "hq-branch1.psk", PSK + b"\n")
    write_file(tmp_path / "keys" / "branch1-hq.psk", PSK + b"\n")
    hq, branch = load_config(tmp_path / "hq.yaml"), load_config(tmp_path / "branch-1.yaml")
    assert hq.tunnels[0].ike.psk == branch.tunnels[0].ike.psk == Secret(PSK)
    assert hq.tunnels[0].ike.local_id == "gw.hq.example" and branch.tunnels[0].ike.local_id == "gw.branch1.example"
    assert hq.tunnels[0].ike.start is branch.tunnels[0].ike.start is StartMode.INITIATE


# -- lifetimes and DPD ------------------------------------------------------------------------------------


def test_lifetimes_and_dpd(site: Path) -> None:
    text = GOOD + "      rekey_time: 600\n      lifetime: 700\n      ike_rekey_time: 3600\n      dpd_delay: 0\n"
    ike = load_config(write(site, text)).tunnels[0].ike
    assert (ike.rekey_time, ike.lifetime, ike.ike_rekey_time, ike.ike_lifetime, ike.dpd_delay) == (600, 700, 3600, None, 0)
    defaults = load_config(write(site, GOOD)).tunnels[0].ike
    assert (defaults.rekey_time, defaults.ike_rekey_time, defaults.dpd_delay) == (3600, 14400, 30)
    assert defaults.dpd_action is None  # restart when initiating, else clear (control_plane._restarts)
    for action in ("restart", "clear"):
        assert load_config(write(site, GOOD + f"      dpd_action: {action}\n")).tunnels[0].ike.dpd_action == action


@pytest.mark.parametrize("extra,expected", [
    ("      rekey_time: 600\n      lifetime: 600\n", "17:17: tunnels[0].ike.lifetime: must be longer than rekey_time"),
    ("      ike_rekey_time: 0\n", "16:23: tunnels[0].ike.ike_rekey_time:"),
    ("      dpd_delay: soon\n", "16:18: tunnels[0].ike.dpd_delay:"),
    ("      dpd_action: hold\n", "16:19: tunnels[0].ike.dpd_action:"),
])
def test_bad_lifetimes(site: Path, extra: str, expected: str) -> None:
    found = problems(write(site, GOOD + extra))
    assert len(found) == 1 and expected in found[0], found


def test_volume_lifetimes(site: Path) -> None:
    ike = load_config(write(site, GOOD + "      rekey_bytes: 1000000000\n      rekey_packets: 500000\n")).tunnels[0].ike
    assert (ike.rekey_bytes, ike.rekey_packets) == (1_000_000_000, 500_000)
    assert "tunnels[0].ike.rekey_packets" in problems(write(site, GOOD + "      rekey_packets: 4294967296\n"))[0]


def test_workers(site: Path) -> None:
    text = GOOD.replace("gateway:\n", "gateway:\n  workers: 4\n")
    assert load_config(write(site, text)).workers == 4
    assert load_config(write(site, GOOD)).workers == 1
    found = problems(write(site, GOOD.replace("gateway:\n", "gateway:\n  workers: 17\n")))
    assert len(found) == 1 and "2:12: gateway.workers:" in found[0], found


def test_dual_stack_listen_serves_peers_of_both_families(site: Path) -> None:
    text = (GOOD.replace("address: 198.18.1.2", "address: [198.18.1.2, 'fd00:ff:1::2']")
            + SECOND_TUNNEL.replace("address: 198.18.3.2", "address: 'fd00:ff:3::2'"))
    config = load_config(write(site, text))
    assert [str(a) for a in config.listen.addresses] == ["198.18.1.2", "fd00:ff:1::2"]
    assert str(config.listen) == "198.18.1.2:4500 and [fd00:ff:1::2]:4500"
    assert problems(write(site, text.replace("  listen:\n", "  workers: 2\n  listen:\n"))) == [
        "C:3:12: gateway.workers: workers > 1 needs one listening address (for now): the workers' sockets share "
        "one family's SPI steering; use workers: 1 with a dual-stack listen.address"]


def test_accept_psk_file_and_fragmentation(site: Path) -> None:
    write_file(site / "keys" / "next.psk", b"another-pre-shared-key-of-enough-length\n")
    config = load_config(write(site, GOOD + "      accept_psk_file: keys/next.psk\n      fragmentation: false\n"))
    ike = config.tunnels[0].ike
    assert ike.accept_psk.reveal() == b"another-pre-shared-key-of-enough-length" and ike.psk.reveal() == PSK
    assert ike.fragmentation is False
    assert load_config(write(site, GOOD)).tunnels[0].ike.fragmentation is True  # on by default
    assert "next" not in repr(ike) and "another" not in repr(ike)


@pytest.mark.parametrize("extra,expected", [
    ("      accept_psk_file: keys/b1.psk\n", "accept_psk_file: holds the same key as psk_file"),
    ("      accept_psk_file: keys/none.psk\n", "accept_psk_file:"),
    ("      fragmentation: sometimes\n", "fragmentation:"),
])
def test_accept_psk_file_mistakes(site: Path, extra: str, expected: str) -> None:
    found = problems(write(site, GOOD + extra))
    assert any(expected in p for p in found), found
