"""Shared fixtures for the jsoftmax test suite."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (reference values and gradient checks)."""
    with jax.enable_x64(True):
        yield
