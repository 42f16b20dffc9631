"""Manual ESP key files: one file per gateway and tunnel, mirrored between the two peers.

A key file holds the two SAs of one tunnel as `ip xfrm state` takes them (SPI, 36-byte RFC 4106 key
with its salt). It is read with the same line-numbered walker as the config, refused when group or
others may read or write it, and no message or repr ever shows a key or an SPI (ARCHITECTURE.md
principle 13): a leaked SPI is harmless alone, but next to a leaked key it completes the SA.

IKEv2 pre-shared key files (read_psk) follow the same rules: private mode, content never echoed.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable
from pathlib import Path

from yaml.nodes import Node

from tunnel.config.model import ManualKeys, ManualSa
from tunnel.config.yamlnodes import (
    INT,
    STR,
    Doc,
    FileProblem,
    Problem,
    Problems,
    parse_document,
    read_regular_file,
)
from tunnel.errors import KeyFileError
from tunnel.secret import Secret

KEY_BYTES = 36  # RFC 4106 §8.1: AES-256 key (32) + salt (4)
MIN_SPI = 256  # RFC 4303 §2.1: SPIs 1..255 are reserved by IANA, 0 for local use
MAX_SPI = 0xFFFFFFFF
MAX_KEY_FILE_BYTES = 64 * 1024
MIN_PSK_BYTES = 16  # RFC 7296 §2.15: a PSK must be as hard to guess as a random key
MAX_PSK_FILE_BYTES = 4096
PSK_RECIPE = "umask 077; head -c 32 /dev/urandom | base64 > FILE"
_HEX_SPI = re.compile(r"0[xX][0-9a-fA-F]{1,16}")
_DEC_SPI = re.compile(r"[0-9]{1,20}")
_KEY = re.compile(rf"(?:0[xX])?([0-9a-fA-F]{{{2 * KEY_BYTES}}})")
_EXPECTED = "a mapping with 'outbound' and 'inbound', each with 'spi' and 'key'"


def load_manual_keys(path: Path, referenced_at: str) -> ManualKeys:
    """Read one key file or raise KeyFileError listing every problem in it.

    referenced_at is the `file:line:col: path` of the config node that named the file; problems with
    the file as a whole (missing, not a file, too open) are reported there, where the admin looks.
    """
    sink = Problems()
    keys = read_manual_keys(Path(path), Problem(referenced_at, 0, 0, "", ""), sink)
    sink.raise_if_any(KeyFileError)
    assert keys is not None
    return keys


def read_manual_keys(path: Path, referenced_at: Problem, sink: Problems) -> ManualKeys | None:
    """Like load_manual_keys, but adds problems to the caller's sink (the config loader's)."""
    data = read_secret_file(path, "key file", MAX_KEY_FILE_BYTES, referenced_at, sink)
    if data is None:
        return None
    doc = Doc(str(path), sink, echo_unknown_keys=False)
    root = parse_document(data, doc.file, sink, _EXPECTED)
    fields = doc.mapping(root, "", required=("outbound", "inbound")) if root is not None else None
    if fields is None:
        return None
    outbound = _sa(doc, fields["outbound"], "outbound") if "outbound" in fields else None
    inbound = _sa(doc, fields["inbound"], "inbound") if "inbound" in fields else None
    if outbound is None or inbound is None:
        return None
    if outbound.spi == inbound.spi:
        doc.error_at("inbound.spi", "must differ from outbound.spi: each direction is its own SA")
        return None
    return ManualKeys(path=path, outbound=outbound, inbound=inbound)


def read_secret_file(path: Path, what: str, max_bytes: int, referenced_at: Problem, sink: Problems) -> bytes | None:
    """The bytes of a file that must be private to this gateway (a key file, a PSK file, a private key), or
    None after reporting at referenced_at why not: missing, not a regular file, too large, or readable or
    writable by group or others. The message names the file, never its content."""
    try:
        return read_regular_file(path, max_bytes, lambda st: too_open(path, st))
    except FileProblem as exc:
        sink.add(referenced_at.about(f"{what} {path} {exc}"))
        return None


def read_psk(path: Path, referenced_at: Problem, sink: Problems) -> Secret | None:
    """A pre-shared key file: the PSK on one line (a trailing newline is not part of it), at least
    MIN_PSK_BYTES long. Both gateways of a tunnel hold the same file. No message shows any of it."""
    data = read_secret_file(path, "PSK file", MAX_PSK_FILE_BYTES, referenced_at, sink)
    if data is None:
        return None
    psk = data[:-1] if data.endswith(b"\n") else data
    psk = psk[:-1] if psk.endswith(b"\r") else psk  # written on Windows: the same PSK as without the CR
    recipe = PSK_RECIPE.replace("FILE", shlex.quote(str(path)))
    if b"\n" in psk or b"\r" in psk:
        problem = "holds more than one line; it must hold the PSK alone on one line"
    elif not psk:
        problem = f"is empty; create a PSK with: {recipe}"
    elif len(psk) < MIN_PSK_BYTES:
        problem = (f"holds a {len(psk)}-byte PSK; at least {MIN_PSK_BYTES} bytes are required, since a short PSK "
                   f"can be guessed offline from one captured IKE_AUTH (RFC 7296 §2.15); create one with: {recipe}")
    else:
        return Secret(psk)
    sink.add(referenced_at.about(f"PSK file {path} {problem}"))
    return None


def too_open(path: Path, st: os.stat_result) -> str | None:
    """The one rule for every secret file (keys, PSKs, private keys): owner-only access, and the owner is
    the gateway's own user or root (anyone else could rewrite the key under us)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"has mode {mode:04o}: group or others may read or write it; "
                f"restrict it with: chmod 600 {shlex.quote(str(path))}")
    if st.st_uid not in (os.geteuid(), 0):
        return (f"belongs to uid {st.st_uid}, neither the gateway's user (uid {os.geteuid()}) nor root; "
                f"give it to the gateway's user with: chown {os.geteuid()} {shlex.quote(str(path))}")
    return None


def _sa(doc: Doc, node: Node, path: str) -> ManualSa | None:
    fields = doc.mapping(node, path, required=("spi", "key"))
    if fields is None:
        return None
    spi = _spi(doc, fields["spi"], f"{path}.spi") if "spi" in fields else None
    key = _key(doc, fields["key"], f"{path}.key") if "key" in fields else None
    return ManualSa(spi=spi, key=key) if spi is not None and key is not None else None


def _spi(doc: Doc, node: Node, path: str) -> int | None:
    """The scalar's original text, not YAML's reading of it: `0x00001001` stays hex, `010` decimal."""
    text = doc.scalar_text(node, path, "an SPI (decimal or 0x-prefixed hex)", (INT, STR))
    if text is None:
        return None
    if _HEX_SPI.fullmatch(text):
        spi = int(text, 16)
    elif _DEC_SPI.fullmatch(text):
        spi = int(text)
    else:
        doc.error(node, path, "must be a decimal or 0x-prefixed hexadecimal integer")
        return None
    if not MIN_SPI <= spi <= MAX_SPI:
        doc.error(node, path, f"must be in {MIN_SPI}..{MAX_SPI:#x} (0-255 are reserved, RFC 4303 §2.1)")
        return None
    return spi


def _key(doc: Doc, node: Node, path: str) -> Secret | None:
    text = doc.scalar_text(node, path, "a key (hex digits)", (INT, STR))
    if text is None:
        return None
    match = _KEY.fullmatch(text)
    if match is None:
        doc.error(node, path, f"must be {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes: AES-256 key + 4-byte salt, "
                              "RFC 4106 §8.1), optionally prefixed 0x")
        return None
    return Secret(bytes.fromhex(match.group(1)))


# -- generation ------------------------------------------------------------------------------------------


def write_manual_key_pair(local: Path, peer: Path, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
    """Create this gateway's key file and the peer's mirror image (its outbound is our inbound).

    Both are created 0600 with O_EXCL: an existing key file is never overwritten, because replacing
    one side's keys silently breaks the tunnel until the other side gets the new copy.
    """
    local, peer = Path(local), Path(peer)
    if os.path.abspath(local) == os.path.abspath(peer):
        raise KeyFileError([f"{local}: the local and peer key files must be two different files"])
    for path in (local, peer):
        if os.path.lexists(path):
            raise KeyFileError([f"{path}: already exists; refusing to overwrite a key file "
                                "(remove it first if you mean to replace the keys)"])
    spi_a, spi_b = _two_spis(random_bytes)
    sa_a, sa_b = ManualSa(spi_a, _random_key(random_bytes)), ManualSa(spi_b, _random_key(random_bytes))
    _create(local, render_key_file(sa_a, sa_b, f"this gateway's file; the peer's mirrored copy is {peer.name}"))
    try:
        role = f"the peer's file: copy it to the peer gateway (its mirror is {local.name})"
        _create(peer, render_key_file(sa_b, sa_a, role))
    except BaseException:
        os.unlink(local)  # we created it a moment ago; half a pair is worse than none
        raise


def render_key_file(outbound: ManualSa, inbound: ManualSa, role: str) -> str:
    """The text of a key file; the only place key bytes are turned into text."""
    role = " ".join(role.split())  # a newline in a file name must not end the comment
    return (
        f"# sitelink manual ESP keys: {role}.\n"
        "# Keep mode 0600; never commit or mail this file. Its outbound SA is the peer's inbound SA.\n"
        "# spi: 256..0xFFFFFFFF (RFC 4303 §2.1). key: AES-256 key + 4-byte salt (RFC 4106 §8.1), as\n"
        "# `ip xfrm state ... aead 'rfc4106(gcm(aes))' 0x<key> 128` takes it.\n"
        "# Manual keys never rotate: use them for bring-up and tests.\n"
        f"outbound:\n  spi: {outbound.spi:#010x}\n  key: 0x{outbound.key.reveal().hex()}\n"
        f"inbound:\n  spi: {inbound.spi:#010x}\n  key: 0x{inbound.key.reveal().hex()}\n"
    )


def _two_spis(random_bytes: Callable[[int], bytes]) -> tuple[int, int]:
    spis: list[int] = []
    for _ in range(64):  # a fair source needs one or two draws; a broken one must not spin forever
        spi = int.from_bytes(random_bytes(4)[:4], "big")
        if spi >= MIN_SPI and spi not in spis:
            spis.append(spi)
        if len(spis) == 2:
            return spis[0], spis[1]
    raise RuntimeError("random source yields no usable SPIs")


def _random_key(random_bytes: Callable[[int], bytes]) -> Secret:
    key = random_bytes(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise RuntimeError(f"random source returned {len(key)} bytes, expected {KEY_BYTES}")
    return Secret(key)


def _create(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyFileError([f"{path}: already exists; refusing to overwrite a key file"]) from None
    except OSError as exc:
        raise KeyFileError([f"{path}: cannot create key file: {exc.strerror}"]) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as exc:
        os.unlink(path)
        raise KeyFileError([f"{path}: cannot write key file: {exc.strerror}"]) from None
