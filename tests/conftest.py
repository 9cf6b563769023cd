"""Shared fixtures for the jsoftmax test suite."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (reference values and gradient checks)."""
    with jax.enable_x64(True):
        yield


# The longest tests (8-device subprocess workers, executed notebooks, the vocabulary-sharded
# kernel sweep) run first: pytest-xdist hands tests out in collection order, so a long test
# collected last keeps one core busy after the other has finished the rest of the suite.
_LONG_FIRST = (
    "test_eight_device_worker",
    "test_mesh_worker_on_eight_devices",
    "test_sparse_functions_on_eight_device_meshes",
    "test_vocab_sharded_kernel_combines_argmax_and_weights",
    "test_notebook_runs",
    "test_multi_device_matches_one_device",
)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: not item.name.startswith(_LONG_FIRST))  # stable: order kept
