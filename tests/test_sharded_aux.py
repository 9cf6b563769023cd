"""token_weights, return_aux and w_layout on the vocabulary-parallel losses (issue 20 item 4).

The tests need 8 devices: they live in tests/_sharded_aux_worker.py and run here in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

from _workers import run_worker


def test_eight_device_worker():
    run_worker("_sharded_aux_worker.py", timeout=600)
