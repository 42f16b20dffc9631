"""External tools a test needs: skipped where one is missing locally, failed in CI (CI=true), where
scripts/bootstrap installs them, so CI never goes green by skipping."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(missing: list[str], package: str) -> None:
    """Skip the test (fail it in CI) when anything it needs is missing."""
    if missing:
        reason = f"{', '.join(missing)} not installed (scripts/bootstrap installs {package})"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def require_tool(command: str, package: str | None = None) -> str:
    """The tool's path; a missing one skips the test, or fails it in CI."""
    path = shutil.which(command)
    require([] if path else [command], package or command)
    assert path is not None
    return path
