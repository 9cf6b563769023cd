"""Running a test file on 8 faked CPU devices, in a process of its own.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts its
backends, so each multi-device test file (``tests/_*_worker.py``) runs under pytest in a
subprocess; the suite's own processes keep one device. The worker files skip themselves when
collected with fewer devices.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_worker(name: str, timeout: int = 1500) -> str:
    """Run ``tests/<name>`` under pytest with 8 faked CPU devices; assert it passed; its output.

    "passed" with nothing skipped: a worker that skipped itself (too few devices) must not pass
    for one that ran.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
    cmd.append(str(ROOT / "tests" / name))
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out, out[-3000:]
    return out
