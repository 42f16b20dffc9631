"""Config loader: every problem as `file:line:col: path: message`, all at once, never a traceback."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.config.keyfile import write_manual_key_pair
from tunnel.config.loader import load_config
from tunnel.config.model import DEFAULT_REPLAY_WINDOW, TunDevice
from tunnel.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

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
    manual_keys: keys/b1.keys
"""

SECOND_TUNNEL = """\
  - name: branch2
    peer:
      address: 198.18.3.2
    local_subnets: [10.1.0.0/24]
    remote_subnets: [10.3.0.0/24]
    manual_keys: keys/b2.keys
"""


def counter_bytes():
    """A deterministic random source: distinct, non-zero draws."""
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 37 + i) % 256 for i in range(n))

    return random_bytes


def make_keys(directory: Path, *names: str) -> None:
    (directory / "keys").mkdir(exist_ok=True)
    source = counter_bytes()
    for name in names:
        write_manual_key_pair(directory / "keys" / f"{name}.keys", directory / "keys" / f"{name}-peer.keys", source)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    make_keys(tmp_path, "b1", "b2")
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [p.replace(str(path), "C") for p in info.value.problems]


# -- good configs ----------------------------------------------------------------------------------------


def test_good_config_loads_with_typed_values_and_defaults(site: Path) -> None:
    config = load_config(write(site, GOOD))
    assert config.name == "hq"
    assert config.listen.address == ipaddress.IPv4Address("198.18.1.2") and config.listen.port == 4500
    assert config.tun == TunDevice()
    assert config.socket_buffer_bytes == 4 * 1024 * 1024 and config.log_level == "info"
    (tunnel,) = config.tunnels
    assert tunnel.name == "branch1"
    assert tunnel.peer.address == ipaddress.IPv4Address("198.18.2.2") and tunnel.peer.port == 4500
    assert tunnel.local_subnets == (ipaddress.IPv4Network("10.1.0.0/24"),)
    assert tunnel.remote_subnets == (ipaddress.IPv4Network("10.2.0.0/24"),)
    assert tunnel.replay_window == DEFAULT_REPLAY_WINDOW
    assert tunnel.manual_keys.path == site / "keys" / "b1.keys"
    assert len(tunnel.manual_keys.outbound.key) == 36


def test_every_field_given(site: Path) -> None:
    text = GOOD.replace("  listen:\n", "  log_level: debug\n  socket_buffer_bytes: 65536\n  tun:\n"
                        "    name: st0\n    wan_mtu: 9000\n    mtu: 1400\n    addresses: [10.1.0.1/24, 'fd00::1/64']\n"
                        "    txqueuelen: 1000\n  listen:\n    port: 14500\n")
    text = text.replace("      address: 198.18.2.2\n", "      address: 198.18.2.2\n      port: 4501\n")
    text += "    replay_window: 4096\n"
    config = load_config(write(site, text))
    assert config.log_level == "debug" and config.socket_buffer_bytes == 65536
    assert config.tun == TunDevice("st0", 9000, 1400, (ipaddress.ip_interface("10.1.0.1/24"),
                                                        ipaddress.ip_interface("fd00::1/64")), 1000)
    assert config.listen.port == 14500 and config.tunnels[0].peer.port == 4501
    assert config.tunnels[0].replay_window == 4096


def test_example_configs_load_and_mirror_each_other(tmp_path: Path) -> None:
    for name in ("hq.yaml", "branch-1.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    (tmp_path / "keys").mkdir()
    for name in ("hq-branch1.psk", "branch1-hq.psk"):
        (tmp_path / "keys" / name).write_text("the same PSK on both sides, 32+ bytes\n")
        os.chmod(tmp_path / "keys" / name, 0o600)
    hq, branch = load_config(tmp_path / "hq.yaml"), load_config(tmp_path / "branch-1.yaml")
    assert hq.tunnels[0].remote_subnets == branch.tunnels[0].local_subnets == (ipaddress.ip_network("10.2.0.0/24"),)
    assert hq.tunnels[0].peer.address == branch.listen.address
    assert hq.tunnels[0].manual_keys is None and hq.ike_port == branch.ike_port == 500
    assert hq.tunnels[0].ike.psk == branch.tunnels[0].ike.psk
    assert (hq.tunnels[0].ike.local_id, hq.tunnels[0].ike.remote_id) == (branch.tunnels[0].ike.remote_id,
                                                                         branch.tunnels[0].ike.local_id)
    assert hq.tunnels[0].ike.ike_proposals == branch.tunnels[0].ike.ike_proposals


def test_example_configs_manual_keys_variant_loads(tmp_path: Path) -> None:
    """The commented-out testing variant: replace `ike:` by `manual_keys:`; the keys mirror each other."""
    for name in ("hq.yaml", "branch-1.yaml"):
        text = (REPO / "configs" / name).read_text()
        ike = text.index("    ike:\n")
        text = text[:ike] + text[ike:].replace("    # manual_keys:", "    manual_keys:", 1)
        end = text.index("    # Certificate variant", ike)
        (tmp_path / name).write_text(text[:ike] + text[end:])
    (tmp_path / "keys").mkdir()
    write_manual_key_pair(tmp_path / "keys/hq-branch1.keys", tmp_path / "keys/branch1-hq.keys")
    hq, branch = load_config(tmp_path / "hq.yaml"), load_config(tmp_path / "branch-1.yaml")
    assert hq.tunnels[0].ike is None
    assert hq.tunnels[0].manual_keys.outbound == branch.tunnels[0].manual_keys.inbound
    assert hq.tunnels[0].manual_keys.inbound == branch.tunnels[0].manual_keys.outbound


def test_config_path_relative_to_working_directory_resolves_key_files(site: Path, monkeypatch) -> None:
    write(site, GOOD)
    monkeypatch.chdir(site.parent)
    config = load_config(Path(site.name) / "config.yaml")
    assert config.tunnels[0].manual_keys.path == Path(site.name) / "keys" / "b1.keys"


# -- one problem each, at its exact place ----------------------------------------------------------------

CASES = [
    # (id, old, new, expected problem)
    ("unknown key", "  name: hq\n", "  name: hq\n  nmae: x\n",
     "C:3:3: gateway.nmae: unknown key; did you mean 'name'?"),
    ("duplicate key", "  name: hq\n", "  name: hq\n  name: hq2\n",
     "C:3:3: gateway.name: duplicate key (first defined at line 2)"),
    ("string for int", "    address: 198.18.1.2\n", "    address: 198.18.1.2\n    port: '4500'\n",
     "C:5:11: gateway.listen.port: expected an integer, got a string"),
    ("bool for int", "    address: 198.18.1.2\n", "    address: 198.18.1.2\n    port: true\n",
     "C:5:11: gateway.listen.port: expected an integer, got a boolean"),
    ("hex int", "    address: 198.18.1.2\n", "    address: 198.18.1.2\n    port: 0x1194\n",
     "C:5:11: gateway.listen.port: '0x1194' must be written as a decimal integer"),
    ("port out of range", "    address: 198.18.1.2\n", "    address: 198.18.1.2\n    port: 65536\n",
     "C:5:11: gateway.listen.port: '65536' is out of range 1..65535"),
    ("list for mapping", "  listen:\n    address: 198.18.1.2\n", "  listen: [198.18.1.2]\n",
     "C:3:11: gateway.listen: expected a mapping, got a list"),
    ("missing key", "  name: hq\n", "",
     "C:2:3: gateway.name: missing required key"),
    ("int for name", "  name: hq\n", "  name: 123\n",
     "C:2:9: gateway.name: expected a string, got an integer (quote it: '123')"),
    ("bad name", "  name: hq\n", "  name: h q!\n",
     "C:2:9: gateway.name: 'h q!' is not valid: 1-32 characters from A-Z a-z 0-9 _ . -"),
    ("bad address", "address: 198.18.1.2", "address: 198.18.1.300",
     "C:4:14: gateway.listen.address: '198.18.1.300' is not an IPv4 or IPv6 address"),
    ("host bits", "remote_subnets: [10.2.0.0/24]", "remote_subnets: [10.2.0.1/24]",
     "C:10:22: tunnels[0].remote_subnets[0]: 10.2.0.1/24 has host bits set; did you mean 10.2.0.0/24?"),
    ("no prefix", "local_subnets: [10.1.0.0/24]", "local_subnets: [10.1.0.0/24, 10.9.0.0]",
     "C:9:34: tunnels[0].local_subnets[1]: '10.9.0.0' needs a prefix length, e.g. 10.1.0.0/24 "
     "(a single host is /32 or /128)"),
    ("empty list", "local_subnets: [10.1.0.0/24]", "local_subnets: []",
     "C:9:20: tunnels[0].local_subnets: must not be empty"),
    ("no tunnels", GOOD[GOOD.index("tunnels:"):], "tunnels: []\n",
     "C:5:10: tunnels: must not be empty"),
    ("unspecified peer", "address: 198.18.2.2", "address: 0.0.0.0",
     "C:8:16: tunnels[0].peer.address: 0.0.0.0 is not a unicast address; the peer needs its concrete WAN address"),
    ("replay window", "manual_keys: keys/b1.keys\n", "manual_keys: keys/b1.keys\n    replay_window: 100\n",
     "C:12:20: tunnels[0].replay_window: 100 is not a multiple of 64 (the window is kept in 64-bit words, RFC 6479)"),
    ("ifname", "  listen:\n", "  tun: {name: sitelink-too-long0}\n  listen:\n",
     "C:3:15: gateway.tun.name: 'sitelink-too-long0' is not a valid interface name: must be 1-15 bytes long"),
    ("log level", "  listen:\n", "  log_level: verbose\n  listen:\n",
     "C:3:14: gateway.log_level: 'verbose' is not one of debug, info, warning, error"),
    ("null value", "  listen:\n", "  socket_buffer_bytes:\n  listen:\n",
     "C:3:23: gateway.socket_buffer_bytes: expected an integer, got an empty value"),
    ("tunnel mtu above derived", "    manual_keys: keys/b1.keys\n", "    manual_keys: keys/b1.keys\n    mtu: 1439\n",
     "C:12:10: tunnels[0].mtu: 1439 exceeds 1438, the largest inner packet that fits a 1500-byte IPv4 WAN path "
     "after ESP-in-UDP overhead; lower mtu or raise gateway.tun.wan_mtu"),
    ("derived mtu too small for ipv6", "  listen:\n", "  tun: {wan_mtu: 1300}\n  listen:\n",
     None),  # replaced below: needs an IPv6 subnet too
    ("peer family", "address: 198.18.2.2", "address: '2001:db8::2'",
     "C:8:16: tunnels[0].peer.address: peer is IPv6 but gateway.listen.address 198.18.1.2 is IPv4; "
     "a socket serves one address family (list one address of each family in gateway.listen.address for both)"),
    ("two listen addresses of one family", "address: 198.18.1.2", "address: [198.18.1.2, 198.18.1.3]",
     "C:4:14: gateway.listen.address: give one address, or one IPv4 and one IPv6 address (dual stack)"),
    ("remote equals local", "remote_subnets: [10.2.0.0/24]", "remote_subnets: [10.2.0.0/24, 10.1.0.0/24]",
     "C:10:35: tunnels[0].remote_subnets[1]: 10.1.0.0/24 is also this tunnel's local subnet; local and remote "
     "must differ"),
    ("bad peer name", "address: 198.18.2.2", "address: hub_1.example",
     "C:8:16: tunnels[0].peer.address: 'hub_1.example' is not an IPv4 or IPv6 address, a DNS name or 'any'"),
    ("mistyped peer address", "address: 198.18.2.2", "address: 198.18.2.256",
     "C:8:16: tunnels[0].peer.address: '198.18.2.256' is not an IPv4 or IPv6 address, a DNS name or 'any'"),
    ("manual keys need an address", "address: 198.18.2.2", "address: any",
     "C:8:16: tunnels[0].peer.address: manual keys need the peer's IP address (not any): without IKE nothing "
     "learns where the peer is"),
    ("remote overlaps within tunnel", "remote_subnets: [10.2.0.0/24]", "remote_subnets: [10.2.0.0/16, 10.2.3.0/24]",
     "C:10:35: tunnels[0].remote_subnets[1]: 10.2.3.0/24 overlaps 10.2.0.0/16 (tunnels[0].remote_subnets[0]); "
     "a packet must select exactly one tunnel"),
    ("missing key file", "keys/b1.keys", "keys/none.keys",
     "C:11:18: tunnels[0].manual_keys: key file {dir}/keys/none.keys does not exist"),
    ("alias", "  name: hq\n", "  name: &n hq\n  log_level: *n\n",
     "C:3:14: YAML syntax error: YAML aliases (*name) are not supported"),
    ("merge key", "  name: hq\n", "  name: hq\n  <<: {log_level: info}\n",
     "C:3:3: gateway: keys must be plain strings, got a merge key (<<), which is not supported"),
]


@pytest.mark.parametrize("old,new,expected", [c[1:] for c in CASES if c[3]], ids=[c[0] for c in CASES if c[3]])
def test_each_problem_reported_at_its_node(site: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert problems(write(site, GOOD.replace(old, new, 1))) == [expected.format(dir=site)]


def test_derived_mtu_too_small_for_ipv6(site: Path) -> None:
    text = GOOD.replace("  listen:\n", "  tun: {wan_mtu: 1300}\n  listen:\n").replace(
        "[10.2.0.0/24]", "[10.2.0.0/24, 'fd02::/64']")
    assert problems(write(site, text)) == [
        "C:3:18: gateway.tun.wan_mtu: the derived inner MTU 1238 of a 1300-byte IPv4 WAN path is below 1280, the "
        "minimum IPv6 link MTU (RFC 8200 §5); raise wan_mtu to at least 1344"
    ]


def test_explicit_mtu_too_small_for_ipv6(site: Path) -> None:
    text = GOOD.replace("  listen:\n", "  tun: {mtu: 1200}\n  listen:\n").replace("[10.1.0.0/24]", "['fd01::/64']")
    assert problems(write(site, text)) == [
        "C:3:14: gateway.tun.mtu: 1200 is below 1280, the minimum IPv6 link MTU (RFC 8200 §5), and this gateway "
        "carries IPv6"
    ]


def test_ipv6_outer_derives_smaller_mtu(site: Path) -> None:
    text = GOOD.replace("198.18.1.2", "'2001:db8::1'").replace("198.18.2.2", "'2001:db8::2'")
    config = load_config(write(site, text + "    mtu: 1418\n"))
    assert config.tunnels[0].mtu == 1418
    assert problems(write(site, text + "    mtu: 1419\n"))[0].startswith(
        "C:12:10: tunnels[0].mtu: 1419 exceeds 1418, the largest inner packet that fits a 1500-byte IPv6 WAN path")


def test_unquoted_ipv6_wildcard_gets_a_hint(site: Path) -> None:
    assert problems(write(site, GOOD.replace("198.18.1.2", "::"))) == [
        "C:4:15: YAML syntax error: mapping values are not allowed here "
        "(quote a value that contains ': ' or ends in ':', such as '::' or 'fd00::')"
    ]


def test_wildcard_listen_address_is_accepted(site: Path) -> None:
    assert load_config(write(site, GOOD.replace("198.18.1.2", "0.0.0.0"))).listen.address.is_unspecified


# -- cross-tunnel checks ------------------------------------------------------------------------------------


def test_cross_tunnel_conflicts_reported_at_the_later_tunnel(site: Path) -> None:
    second = SECOND_TUNNEL.replace("branch2", "branch1").replace("10.3.0.0/24", "10.2.0.0/16")
    assert problems(write(site, GOOD + second)) == [
        "C:12:11: tunnels[1].name: duplicate tunnel name 'branch1' (also tunnels[0].name)",
        "C:16:22: tunnels[1].remote_subnets[0]: 10.2.0.0/16 overlaps 10.2.0.0/24 (tunnels[0].remote_subnets[0]); "
        "a packet must select exactly one tunnel",
    ]


def test_duplicate_inbound_spi_across_tunnels(site: Path) -> None:
    second = SECOND_TUNNEL.replace("keys/b2.keys", "keys/b1.keys")
    assert problems(write(site, GOOD + second)) == [
        f"C:17:18: tunnels[1].manual_keys: the inbound SPI in {site}/keys/b1.keys is also the inbound SPI of "
        f"tunnels[0] ({site}/keys/b1.keys); the receiver tells tunnels apart by SPI"
    ]


def test_two_good_tunnels(site: Path) -> None:
    config = load_config(write(site, GOOD + SECOND_TUNNEL))
    assert [t.name for t in config.tunnels] == ["branch1", "branch2"]


# -- all problems at once, sorted ----------------------------------------------------------------------------


def test_all_problems_reported_at_once_in_file_order(site: Path) -> None:
    text = (GOOD.replace("  listen:\n", "  colour: blue\n  listen:\n")
            .replace("remote_subnets: [10.2.0.0/24]", "remote_subnets: [10.2.0.1/24]")
            .replace("address: 198.18.1.2", "address: 198.18.1.2\n    port: 'x'"))
    assert problems(write(site, text)) == [
        "C:3:3: gateway.colour: unknown key; expected one of: announce, control_socket, ha, ike_port, key_log, listen, "
        "log_format, log_level, metrics, name, pki, qos, socket_buffer_bytes, state_dir, tun, workers",
        "C:6:11: gateway.listen.port: expected an integer, got a string",
        "C:12:22: tunnels[0].remote_subnets[0]: 10.2.0.1/24 has host bits set; did you mean 10.2.0.0/24?",
    ]


def test_key_file_problems_fold_into_the_config_error(site: Path) -> None:
    os.chmod(site / "keys" / "b1.keys", 0o640)
    text = GOOD.replace("  name: hq\n", "  name: hq\n  extra: 1\n")
    found = problems(write(site, text))
    assert found[0] == ("C:3:3: gateway.extra: unknown key; expected one of: announce, control_socket, ha, ike_port, key_log, "
                        "listen, log_format, log_level, metrics, name, pki, qos, socket_buffer_bytes, state_dir, tun, workers")
    assert found[1].startswith(f"C:12:18: tunnels[0].manual_keys: key file {site}/keys/b1.keys has mode 0640")
    assert found[1].endswith(f"chmod 600 {site}/keys/b1.keys")
    assert len(found) == 2


# -- files that are not configs at all ------------------------------------------------------------------------


@pytest.mark.parametrize("content,expected", [
    (b"", "C:1:1: file is empty; expected a mapping with 'gateway' and 'tunnels'"),
    (b"# only a comment\n", "C:1:1: file is empty; expected a mapping with 'gateway' and 'tunnels'"),
    (b"- gateway\n- tunnels\n", "C:1:1: expected a mapping, got a list"),
    (b"gateway:\n  name: [hq\n", "C:3:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']', "
                                 "but got '<stream end>'"),
    (b"gateway: {}\n\x00\x01\x02", "C:2:1: character U+0000 is not allowed in YAML"),
    (b"gateway:\n  name: h\xe9\n", "C:2:10: file is not UTF-8 text"),
    ("# \u00e9\u00e9\ngateway:\n  name: \u00e9".encode() + b"\xff", "C:3:10: file is not UTF-8 text"),
    (b"a: 1\n---\nb: 2\n", "C:2:1: YAML syntax error: expected a single document in the stream, "
                          "but found another document"),
])
def test_not_a_config(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert problems(path) == [expected]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == ["C: config file does not exist"]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == [f"{tmp_path}: config file is a directory, not a file"]


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert len(problems(path)) == 1


# -- never a traceback --------------------------------------------------------------------------------------

SCHEMA_WORDS = ["gateway", "tunnels", "name", "listen", "address", "port", "tun", "wan_mtu", "mtu", "addresses",
                "txqueuelen", "socket_buffer_bytes", "log_level", "peer", "local_subnets", "remote_subnets",
                "manual_keys", "replay_window"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["10.1.0.0/24", "10.1.0.1/24", "::", "0.0.0.0", "198.18.2.2", "fd00::/64", "keys/b1.keys",
                     "/", ".", "sitelink0", "1:2:3:4:5:6:7:8"]),
)
NEAR_SCHEMA = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(SCHEMA_WORDS) | st.text(max_size=5), children,
                                               max_size=6)),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    make_keys(directory, "b1")
    return directory


def only_config_error(directory: Path, content: bytes) -> None:
    path = directory / "fuzz.yaml"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_arbitrary_text_only_raises_config_error(fuzz_dir: Path, text: str) -> None:
    only_config_error(fuzz_dir, text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(data=st.binary())
def test_arbitrary_bytes_only_raise_config_error(fuzz_dir: Path, data: bytes) -> None:
    only_config_error(fuzz_dir, data)


@settings(max_examples=300, deadline=None)
@given(document=NEAR_SCHEMA)
def test_near_schema_documents_only_raise_config_error(fuzz_dir: Path, document: object) -> None:
    only_config_error(fuzz_dir, yaml.safe_dump(document, allow_unicode=True).encode())


def test_no_traceback_on_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("[" * 5000)
    assert len(problems(path)) == 1


def test_workers_need_ike_tunnels(site: Path) -> None:
    found = problems(write(site, GOOD.replace("gateway:\n", "gateway:\n  workers: 2\n")))
    assert len(found) == 1 and found[0].startswith("C:12:18: tunnels[0].manual_keys: gateway.workers > 1 needs IKEv2"), found
