"""Stateless DoS cookies (RFC 7296 §2.6).

Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>). The responder keeps no state for a
request until the initiator proves it can receive at its source address by echoing the cookie. The
secret changes on a schedule the caller drives (`rotate`); the previous secret stays valid one period
so cookies handed out just before a rotation still work.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

SECRET_LEN = 32


class CookieJar:
    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self._random = random_bytes
        self._version = 0
        self._secrets = {0: random_bytes(SECRET_LEN)}

    def rotate(self) -> None:
        self._version = (self._version + 1) % 256
        self._secrets = {self._version: self._random(SECRET_LEN), **{
            v: s for v, s in self._secrets.items() if v == (self._version - 1) % 256}}

    def make(self, nonce_i: bytes, address: bytes, spi_i: bytes) -> bytes:
        return bytes([self._version]) + self._digest(self._secrets[self._version], nonce_i, address, spi_i)

    def check(self, cookie: bytes, nonce_i: bytes, address: bytes, spi_i: bytes) -> bool:
        if len(cookie) != 33 or cookie[0] not in self._secrets:
            return False
        return hmac.compare_digest(cookie[1:], self._digest(self._secrets[cookie[0]], nonce_i, address, spi_i))

    @staticmethod
    def _digest(secret: bytes, nonce_i: bytes, address: bytes, spi_i: bytes) -> bytes:
        return hashlib.sha256(nonce_i + address + spi_i + secret).digest()
