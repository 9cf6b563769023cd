"""The sparse normalisers and Fenchel–Young losses on meshes (issue 20 item 1).

The tests live in tests/_sparse_mesh_worker.py and run here in a subprocess with 8 faked CPU
devices (``XLA_FLAGS`` must be set before JAX starts), as tests/test_sharded.py runs
tests/_sharded_worker.py; this process keeps one device.
"""

from _workers import run_worker


def test_sparse_functions_on_eight_device_meshes():
    run_worker("_sparse_mesh_worker.py")
