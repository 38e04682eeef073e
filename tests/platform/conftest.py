"""Fixtures of the platform checks: the checkout's wheel, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.platform.rootfs import build_wheel

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def edgedl_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edgedl wheel of this checkout (pure Python, for every architecture)."""
    return build_wheel(CHECKOUT, tmp_path_factory.mktemp("wheel"))
