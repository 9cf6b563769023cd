"""The sparse normalisers and Fenchel–Young losses on meshes (issue 20 item 1).

The tests live in tests/_sparse_mesh_worker.py and run here in a subprocess with 8 faked CPU
devices (``XLA_FLAGS`` must be set before JAX starts), as tests/test_sharded.py runs
tests/_sharded_worker.py; this process keeps one device.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sparse_functions_on_eight_device_meshes():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--no-header",
        str(ROOT / "tests" / "_sparse_mesh_worker.py"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out, out[-3000:]
