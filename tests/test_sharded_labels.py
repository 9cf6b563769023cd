"""Out-of-range labels in the vocabulary-parallel losses on 2 and 8 devices (issue 19 item 8).

The tests live in tests/_sharded_labels_worker.py and run in a subprocess with 8 faked CPU
devices; a regression there aborts that process (a collective timing out), which fails this
test rather than the whole session.
"""

from __future__ import annotations

from _workers import run_worker


def test_eight_device_worker():
    run_worker("_sharded_labels_worker.py", timeout=900)
