"""OCSP over HTTP (RFC 6960 Appendix A.1): POST the DER request, read the DER response. A thin driver:
blocking (the gateway runs it in a thread), bounded in time and size, every failure one line of text."""

from __future__ import annotations

import urllib.error
import urllib.request

MAX_RESPONSE = 64 * 1024


def post(url: str, request: bytes, timeout: float) -> tuple[bytes | None, str]:
    """(response, "") or (None, why not)."""
    http = urllib.request.Request(url, data=request, method="POST",  # noqa: S310 - http:// only (config)
                                  headers={"Content-Type": "application/ocsp-request",
                                           "Accept": "application/ocsp-response"})
    try:
        with urllib.request.urlopen(http, timeout=timeout) as answer:  # noqa: S310
            body = answer.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"
    if len(body) > MAX_RESPONSE:
        return None, f"answer longer than {MAX_RESPONSE} bytes"
    return body, ""
