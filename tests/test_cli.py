"""Tests for the ``jsoftmax`` command line (jsoftmax/__main__.py, jsoftmax/train/cli.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jsoftmax import __main__ as cli
from jsoftmax.train import Config, get_config
from jsoftmax.train.cli import parse_config

REPO = Path(__file__).resolve().parents[1]
FAST = ["--hidden-sizes", "8", "--epochs", "1", "--warmup-epochs", "0.5", "--batch-size", "256"]


def parse(argv: list[str]) -> Config:
    """The Config that ``jsoftmax train ARGV`` would run, without running it."""
    return parse_config(argv)


def test_every_config_field_has_a_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") + " " in text or f"--{f.name}" in text
    assert "--plot, --no-plot" in text and "--activation {relu,gelu}" in text


def test_no_flags_gives_the_default_config():
    assert parse([]) == get_config()


def test_flags_map_onto_config_fields():
    config = parse(
        [
            "--hidden-sizes", "32,16", "--activation", "relu", "--optimizer", "sgd",
            "--learning-rate", "0.05", "--momentum", "0.8", "--label-smoothing", "0",
            "--weight-decay", "0.001", "--epochs", "7", "--batch-size", "100",
            "--no-plot", "--quiet", "--seed", "3", "--output-dir", "out",
            "--data", "mnist", "--data-dir", "/data",
        ]
    )  # fmt: skip
    assert config == get_config(
        hidden_sizes=(32, 16), activation="relu", optimizer="sgd", learning_rate=0.05,
        momentum=0.8, label_smoothing=0.0, weight_decay=0.001, epochs=7, batch_size=100,
        plot=False, quiet=True, seed=3, output_dir="out", data="mnist", data_dir="/data",
    )  # fmt: skip
    assert parse(["--hidden-sizes", ""]).hidden_sizes == ()
    assert parse(["--resume"]).resume == "latest"
    assert parse(["--resume", "runs/x/checkpoints/epoch_0003.npz"]).resume.endswith("0003.npz")
    assert parse(["--output-dir", ""]).output_dir == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--activation", "tanh"], "argument --activation: invalid choice: 'tanh'"),
        (["--hidden-sizes", "32,x"], "expected comma-separated integers such as 256,256"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--learning-rate", "-1"], "Config.learning_rate must be > 0; got -1.0"),
        (["--data", "mnist"], "Config.data_dir must be the folder"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: jsoftmax" in err and message in err


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *FAST, "--output-dir", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "test accuracy" in stdout and "1 epochs on" in stdout and str(out) in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hidden_sizes"] == [8] and metrics["config"]["epochs"] == 1
    assert f"test accuracy {metrics['test']['accuracy']:.4f}" in stdout
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_0001.npz"]


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_tty_and_quiet(tmp_path, monkeypatch, quiet):
    fake = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    argv = ["train", *FAST, "--output-dir", "", *(["--quiet"] if quiet else [])]
    assert cli.main(argv) == 0
    bar = fake.getvalue()
    if quiet:
        assert bar == ""
    else:
        assert "epoch 1/1" in bar and "loss=" in bar and "acc=" in bar and "val_acc=" in bar


def test_no_progress_bar_when_not_a_tty_and_no_files_without_output_dir(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *FAST, "--output-dir", ""]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # pytest's captured stderr is not a TTY: tqdm stays silent
    assert "test accuracy" in captured.out and "checkpoints in" not in captured.out
    assert list(tmp_path.iterdir()) == []  # --output-dir '' writes nothing anywhere


def test_data_errors_exit_1_naming_the_file(tmp_path, capsys):
    argv = ["train", *FAST, "--data", "mnist", "--data-dir", str(tmp_path), "--quiet"]
    assert cli.main([*argv, "--output-dir", ""]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jsoftmax train: error: MNIST file not found")
    assert str(tmp_path / "train-images-idx3-ubyte") in err


def test_resume_errors_exit_1(tmp_path, capsys):
    argv = ["train", *FAST, "--output-dir", str(tmp_path), "--resume", "--quiet"]
    assert cli.main(argv) == 1
    assert "--resume latest: no checkpoint in" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert cli.main([*argv[:-2], "--resume", str(bad), "--quiet"]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err


EXTRA = 'pip install "jsoftmax[train]"'


@pytest.mark.parametrize(
    ("module", "package", "flags"),
    [
        ("sklearn", "scikit-learn", []),
        ("tqdm", "tqdm", ["--data", "mnist", "--data-dir", "nowhere", "--no-plot"]),
        ("matplotlib", "matplotlib", []),
    ],
)
def test_missing_extra_is_one_line_and_exit_1(
    module, package, flags, tmp_path, monkeypatch, capsys
):
    """A package of the ``train`` extra that is not installed: one line saying what to install."""
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    out = tmp_path / "run"
    assert cli.main(["train", *FAST, "--output-dir", str(out), *flags]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"jsoftmax train needs the training extra ({package} not installed): {EXTRA}\n"
    )
    assert not out.exists()  # checked before anything was loaded, compiled or written


def test_matplotlib_is_needed_only_for_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["train", *FAST, "--output-dir", str(tmp_path), "--no-plot", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert not (tmp_path / "metrics.png").exists()


# The library without the train extra, in a fresh interpreter: importing jsoftmax, computing a
# loss and importing jsoftmax.train load none of the extra's packages; with them blocked,
# `jsoftmax train` prints one line and exits 1.
_WITHOUT_EXTRA = """
import sys
import jax.numpy as jnp
import jsoftmax
import jsoftmax.train
float(jsoftmax.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 2])))
extra = ("sklearn", "tqdm", "matplotlib")
assert not [m for m in sys.modules if m.split(".")[0] in extra], sorted(sys.modules)
for m in extra:
    sys.modules[m] = None
from jsoftmax.__main__ import main
sys.exit(main(["train"]))
"""


def test_without_the_train_extra(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == (
        "jsoftmax train needs the training extra (scikit-learn, tqdm, matplotlib not installed): "
        f"{EXTRA}\n"
    )
    assert list(tmp_path.iterdir()) == []  # no runs/digits


@pytest.mark.parametrize(
    ("command", "module"),
    [("check", "jsoftmax._gradcheck"), ("bench", "jsoftmax.bench.__main__")],
)
def test_check_and_bench_delegate_their_arguments(command, module, monkeypatch):
    seen = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(list(argv)) or 3
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "--quick", "-x"]) == 3
    assert seen == [["--quick", "-x"]]


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "jsoftmax", "train", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "usage: jsoftmax train" in proc.stdout and "--hidden-sizes N,N,..." in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "jsoftmax"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2 and "train" in proc.stderr and "check" in proc.stderr
