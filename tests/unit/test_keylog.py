"""Key logs (Wireshark key export) are opened once, never through a symbolic link, and only when the
file is a regular file of the gateway's user that nobody else can read (issue #13, item 14)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_keyfile import require_root
from tunnel.errors import DriverError
from tunnel.ike.keys import IkeKeys
from tunnel.ops.keylog import IkeKeyLog


def keys() -> IkeKeys:
    return IkeKeys(sk_d=b"d", sk_ai=b"", sk_ar=b"", sk_ei=b"\x01" * 36, sk_er=b"\x02" * 36, sk_pi=b"p", sk_pr=b"q")


def test_a_new_key_log_is_owner_only_and_keeps_writing_where_it_was_opened(tmp_path: Path) -> None:
    path = tmp_path / "ike.keys"
    log = IkeKeyLog(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.rename(tmp_path / "moved.keys")
    path.write_text("")  # someone puts a file under the old name: it gets nothing
    log(b"\xaa" * 8, b"\xbb" * 8, keys(), 256)
    log.close()
    assert path.read_text() == "" and (tmp_path / "moved.keys").read_text().startswith("aaaaaaaaaaaaaaaa,bbbb")


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.chmod(target, 0o600)
    (tmp_path / "ike.keys").symlink_to(target)
    with pytest.raises(DriverError, match="symbolic link"):
        IkeKeyLog(tmp_path / "ike.keys")


def test_an_open_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ike.keys"
    path.write_text("")
    os.chmod(path, 0o644)
    with pytest.raises(DriverError, match="mode 0644"):
        IkeKeyLog(path)
    require_root()
    os.chmod(path, 0o600)
    os.chown(path, 65534, -1)
    with pytest.raises(DriverError, match="belongs to uid 65534"):
        IkeKeyLog(path)
