"""Fixtures every test shares."""

from __future__ import annotations

import pytest

from phyrlab import faults


@pytest.fixture(autouse=True)
def _reset_faults():
    """No armed fault point or fault counter leaks from one test into the next."""
    faults.reset()
    yield
    faults.reset()
