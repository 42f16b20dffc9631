"""Suite-wide settings. The lab tests (tests/lab) keep the global per-test timeout of pyproject.toml; every
other test runs in well under a second, so a much shorter deadline catches a hang in a core early."""

from __future__ import annotations

from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parent / "lab"
UNIT_TIMEOUT = 120  # seconds; the slowest property tests take a few


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB not in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
