"""Every dense function on an 8-device mesh (tests/_mesh_worker.py, in a subprocess).

The worker needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so it
runs in a process of its own; this file starts it and reports its failures.
"""

from __future__ import annotations

from _workers import run_worker


def test_mesh_worker_on_eight_devices():
    run_worker("_mesh_worker.py")
