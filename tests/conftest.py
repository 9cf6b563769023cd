"""Shared fixtures for the jsoftmax test suite."""

import importlib.util
from pathlib import Path

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (reference values and gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def benchmark_script():
    """``load(name)``: the module ``benchmarks/<name>.py`` (scripts, not a package), imported."""

    def load(name):
        path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def layouts(monkeypatch):
    """The layouts the Mosaic GPU kernels ran in: ``(kernel name, split)`` per kernel traced."""
    from jsoftmax._impl import mosaic_gpu

    ran = []
    run_rows = mosaic_gpu._run_rows

    def recorded(row_fn, rows, per_row, n_out, write_row, name, offsets=None):
        ran.append((name, offsets is not None))
        return run_rows(row_fn, rows, per_row, n_out, write_row, name, offsets)

    monkeypatch.setattr(mosaic_gpu, "_run_rows", recorded)
    return ran


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
