"""Manual key files: format, permissions, generation, and that no key or SPI ever reaches a message."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.needs import in_ci
from tunnel.config.keyfile import load_manual_keys, write_manual_key_pair
from tunnel.config.loader import load_config
from tunnel.errors import KeyFileError
from tunnel.secret import Secret

KEY_OUT = "a1" * 36
KEY_IN = "b2" * 36
REF = "site.yaml:12:18: tunnels[0].manual_keys"


def key_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "k.keys"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def good_text(out_spi: str = "0x00001001", in_spi: str = "0x00002001", out_key: str = f"0x{KEY_OUT}",
              in_key: str = f"0x{KEY_IN}") -> str:
    return (f"# sitelink manual ESP keys for tunnel branch1. Keep mode 0600.\n"
            f"outbound:\n  spi: {out_spi}\n  key: {out_key}\n"
            f"inbound:\n  spi: {in_spi}\n  key: {in_key}\n")


def require_root() -> None:
    """chown needs root: skipped locally without it, failed in CI (which runs as root)."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("needs root", pytrace=False)
        pytest.skip("needs root")


def problems(path: Path) -> list[str]:
    with pytest.raises(KeyFileError) as info:
        load_manual_keys(path, REF)
    return [p.replace(str(path), "K") for p in info.value.problems]


def test_good_key_file(tmp_path: Path) -> None:
    path = key_file(tmp_path, good_text())
    keys = load_manual_keys(path, REF)
    assert keys.path == path
    assert keys.outbound.spi == 0x1001 and keys.inbound.spi == 0x2001
    assert keys.outbound.key == Secret(bytes.fromhex(KEY_OUT)) and keys.inbound.key.reveal() == bytes.fromhex(KEY_IN)


def test_decimal_spi_and_quoted_key_without_prefix(tmp_path: Path) -> None:
    keys = load_manual_keys(key_file(tmp_path, good_text(out_spi="4097", out_key=f"'{KEY_OUT}'")), REF)
    assert keys.outbound.spi == 4097 and keys.outbound.key.reveal() == bytes.fromhex(KEY_OUT)


@pytest.mark.parametrize("change,expected", [
    ({"out_spi": "0x000000ff"}, "K:3:8: outbound.spi: must be in 256..0xffffffff (0-255 are reserved, RFC 4303 §2.1)"),
    ({"out_spi": "0x100000000"}, "K:3:8: outbound.spi: must be in 256..0xffffffff (0-255 are reserved, RFC 4303 §2.1)"),
    ({"out_spi": "0o7777"}, "K:3:8: outbound.spi: must be a decimal or 0x-prefixed hexadecimal integer"),
    ({"in_spi": "0x00001001"}, "K:6:8: inbound.spi: must differ from outbound.spi: each direction is its own SA"),
    ({"in_key": f"0x{KEY_IN[:-2]}"}, "K:7:8: inbound.key: must be 72 hex digits (36 bytes: AES-256 key + 4-byte salt, "
                                     "RFC 4106 §8.1), optionally prefixed 0x"),
    ({"in_key": "yes"}, "K:7:8: inbound.key: expected a key (hex digits), got a boolean"),
])
def test_bad_values_reported_without_echoing_them(tmp_path: Path, change: dict, expected: str) -> None:
    text = good_text(**change)
    assert problems(key_file(tmp_path, text)) == [expected]  # exact: the bad value is not echoed


def test_structure_problems_all_reported(tmp_path: Path) -> None:
    text = f"outbound:\n  spi: 0x1001\n  key: 0x{KEY_OUT}\n  kye: 0x{KEY_OUT}\ninbound: 12\n"
    assert problems(key_file(tmp_path, text)) == [
        "K:4:3: outbound: unknown key; expected one of: key, spi",  # the unknown key itself is not echoed
        "K:5:10: inbound: expected a mapping, got an integer",
    ]


def test_missing_sections(tmp_path: Path) -> None:
    assert problems(key_file(tmp_path, "outbound: {spi: 4097}\n")) == [
        "K:1:1: inbound: missing required key",
        "K:1:11: outbound.key: missing required key",
    ]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, good_text(), mode)
    assert problems(path) == [
        f"{REF}: key file K has mode {mode:04o}: group or others may read or write it; restrict it with: chmod 600 K"
    ]


def test_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    """A secret file owned by someone else (not root, not the gateway's user) could be rewritten under the
    gateway by its owner: refused, whatever its mode (issue #13)."""
    require_root()
    path = key_file(tmp_path, good_text())
    os.chown(path, 65534, -1)  # nobody
    assert problems(path) == [
        f"{REF}: key file K belongs to uid 65534, neither the gateway's user (uid {os.geteuid()}) nor root; "
        f"give it to the gateway's user with: chown {os.geteuid()} K"]


def test_missing_and_non_regular_key_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "none.keys") == [f"{REF}: key file K does not exist"]
    assert problems(tmp_path) == [f"{REF}: key file K is a directory, not a file"]
    os.mkfifo(tmp_path / "fifo")
    assert problems(tmp_path / "fifo") == [f"{REF}: key file K is not a regular file"]


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_arbitrary_key_file_text_only_raises_key_file_error(tmp_path_factory: pytest.TempPathFactory,
                                                            text: str) -> None:
    path = key_file(tmp_path_factory.mktemp("k"), text)
    try:
        load_manual_keys(path, REF)
    except KeyFileError as exc:
        assert exc.problems


# -- generation ---------------------------------------------------------------------------------------------


def scripted(*chunks: bytes):
    """A random source that returns the given draws in order."""
    queue = list(chunks)
    return lambda n: queue.pop(0)[:n]


def test_write_pair_round_trips_mirrored(tmp_path: Path) -> None:
    local, peer = tmp_path / "hq-branch1.keys", tmp_path / "branch1-hq.keys"
    source = scripted(b"\x00\x00\x00\x07", b"\x12\x34\x56\x78", b"\x12\x34\x56\x78", b"\x9a\xbc\xde\xf0",
                      b"\x01" * 36, b"\x02" * 36)
    write_manual_key_pair(local, peer, source)
    ours, theirs = load_manual_keys(local, REF), load_manual_keys(peer, REF)
    # SPI 7 is reserved (< 256) and the repeated draw is skipped: SPIs are >= 256 and distinct.
    assert (ours.outbound.spi, ours.inbound.spi) == (0x12345678, 0x9ABCDEF0)
    assert ours.outbound.key.reveal() == b"\x01" * 36 and ours.inbound.key.reveal() == b"\x02" * 36
    assert ours.outbound == theirs.inbound and ours.inbound == theirs.outbound
    for path in (local, peer):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith("# sitelink manual ESP keys")
    assert "branch1-hq.keys" in local.read_text().splitlines()[0]


def test_write_pair_with_os_urandom(tmp_path: Path) -> None:
    write_manual_key_pair(tmp_path / "a.keys", tmp_path / "b.keys")
    a, b = load_manual_keys(tmp_path / "a.keys", REF), load_manual_keys(tmp_path / "b.keys", REF)
    assert a.outbound.spi != a.inbound.spi and min(a.outbound.spi, a.inbound.spi) >= 256
    assert a.outbound == b.inbound and a.outbound.key != a.inbound.key


@pytest.mark.parametrize("existing", ["a.keys", "b.keys"])
def test_write_pair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("old")
    with pytest.raises(KeyFileError) as info:
        write_manual_key_pair(tmp_path / "a.keys", tmp_path / "b.keys")
    assert info.value.problems == [f"{tmp_path / existing}: already exists; refusing to overwrite a key file "
                                   "(remove it first if you mean to replace the keys)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "old"


def test_write_pair_into_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        write_manual_key_pair(tmp_path / "a.keys", tmp_path / "nodir" / "b.keys")
    assert info.value.problems == [f"{tmp_path / 'nodir' / 'b.keys'}: cannot create key file: No such file or directory"]
    assert list(tmp_path.iterdir()) == []


# -- secrets stay secret ------------------------------------------------------------------------------------


def test_no_key_or_spi_in_repr_of_loaded_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    source = scripted(b"\x11\x22\x33\x44", b"\x55\x66\x77\x88", b"\xaa" * 36, b"\xbb" * 36)
    write_manual_key_pair(tmp_path / "keys/a.keys", tmp_path / "keys/b.keys", source)
    config_path = tmp_path / "c.yaml"
    config_path.write_text("gateway: {name: hq, listen: {address: 198.18.1.2}}\n"
                           "tunnels:\n- {name: b1, peer: {address: 198.18.2.2}, local_subnets: [10.1.0.0/24],\n"
                           "   remote_subnets: [10.2.0.0/24], manual_keys: keys/a.keys}\n")
    text = repr(load_config(config_path)) + str(load_config(config_path))
    for secret in ("aaaaaaaa", "bbbbbbbb", "11223344", str(0x11223344), "55667788", str(0x55667788), "spi="):
        assert secret not in text.lower()
    assert "redacted" in text


@pytest.mark.parametrize("text", [
    # A key pasted under the wrong name, a key one digit short, a key where the SPI goes, a key in a list.
    f"outbound:\n  spi: 0x{KEY_OUT}\n  key: 0x{KEY_OUT}0\n  {KEY_IN}: 1\ninbound:\n  spi: 4097\n  key: [{KEY_IN}]\n",
    f"outbound:\n  spi: 4097\n  key: {KEY_OUT}: x\n",  # YAML syntax error on a key line
    f"outbound: {{spi: 4097, key: 0x{KEY_OUT}, key: 0x{KEY_IN}, {KEY_IN}: 1}}\n",
])
def test_no_key_text_in_errors_of_a_mangled_key_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(KeyFileError) as info:
        load_manual_keys(key_file(tmp_path, text), REF)
    message = str(info.value)
    assert info.value.problems
    assert "a1a1" not in message and "b2b2" not in message
