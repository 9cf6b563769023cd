"""Tests for the ``jsoftmax`` command line (jsoftmax/__main__.py, jsoftmax/train/cli.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import jsoftmax
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


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"jsoftmax {jsoftmax.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning-rate", "-0.1"], "--learning-rate must be > 0, got -0.1"),
        (["--epochs", "0"], "--epochs must be a positive int, got 0"),
        (["--epochs", "0", "--warmup-epochs", "0.5"], "--epochs must be a positive int, got 0"),
        (["--warmup-epochs", "31"], "--warmup-epochs must be in [0, --epochs=30], got 31.0"),
        # a check across two fields blames the one the user typed, not the default
        (["--val-fraction", "0.85"],
         "--val-fraction must be < 0.8 (--val-fraction + --test-fraction < 1), got 0.85"),
        (["--test-fraction", "0.95"],
         "--test-fraction must be < 0.9 (--val-fraction + --test-fraction < 1), got 0.95"),
        (["--test-fraction", "0.0002"], "--test-fraction must leave at least one test example, "
         "got 0.0002, which splits the 1797 digits into 1617 train, 180 validation, 0 test"),
        (["--data", "mnist"], "--data-dir must be the folder holding the MNIST IDX files when "
         "--data is 'mnist', but it is not set"),
        (["--resume", "--output-dir", ""], "--resume must be a checkpoint file, not 'latest', "
         "when --output-dir is empty, got 'latest'"),
        (["--hidden-sizes", "16,0"],
         "--hidden-sizes must be a tuple of positive ints (may be empty), got (16, 0)"),
        (["--activation", "tanh"], "argument --activation: invalid choice: 'tanh' "
         "(choose from 'relu', 'gelu')"),
        (["--hidden-sizes", "32,x"], "argument --hidden-sizes: expected comma-separated "
         "integers such as 256,256; got '32,x'"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--epochs"], "argument --epochs: expected one argument"),
    ],
)  # fmt: skip
def test_bad_flag_values_are_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"jsoftmax train: error: {message}\n"  # no usage block
    assert captured.out == ""
    with pytest.raises(SystemExit):  # the same through parse_config
        parse(argv)
    assert capsys.readouterr().err == f"jsoftmax train: error: {message}\n"


def test_unknown_flag_after_train_shows_the_train_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--epochs", "3", "--bogus", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jsoftmax train [-h]") and "--hidden-sizes N,N,..." in err
    assert err.endswith("jsoftmax train: error: unrecognized arguments: --bogus x\n")
    # before `train`, it is the top-level command's
    with pytest.raises(SystemExit) as info:
        cli.main(["--bogus", "train"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jsoftmax [-h] [--version]")
    assert err.endswith("jsoftmax: error: unrecognized arguments: --bogus\n")


def test_train_end_to_end(tmp_path, capsys, monkeypatch):
    from jsoftmax.train import loop

    plotted = []
    real_plot = loop.plot_history
    monkeypatch.setattr(
        loop, "plot_history", lambda *a, **kw: plotted.append(kw) or real_plot(*a, **kw)
    )
    out = tmp_path / "run"
    assert cli.main(["train", *FAST, "--output-dir", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "test accuracy" in stdout and "1 epochs on" in stdout and str(out) in stdout
    # the loss says what it is, printed and plotted
    assert "(cross-entropy with label smoothing 0.1, nats)" in stdout
    assert plotted[0]["loss_label"] == "loss, nats\n(cross-entropy with label smoothing 0.1)"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hidden_sizes"] == [8] and metrics["config"]["epochs"] == 1
    assert f"test accuracy {metrics['test']['accuracy']:.4f}" in stdout
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_0001.npz"]


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


EPOCH_LINE = re.compile(
    r"^epoch 1/1: train loss \d\.\d{4} accuracy \d\.\d{4}, "
    r"validation loss \d\.\d{4} accuracy \d\.\d{4}, \d+\.\d\d s$",
    re.MULTILINE,
)
HEADER = "training 1 epoch(s) of 5 steps on 1 device(s); loss: cross-entropy with label smoothing"


@pytest.mark.parametrize(
    ("stdout_tty", "quiet"), [(True, False), (False, False), (True, True)], ids=str
)
def test_progress_bar_on_a_tty_and_quiet(monkeypatch, stdout_tty, quiet):
    """stderr a terminal: the tqdm bar; stdout a file too: also one line per epoch there."""
    err, out = _FakeTTY(), (_FakeTTY() if stdout_tty else io.StringIO())
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["train", *FAST, "--output-dir", "", *(["--quiet"] if quiet else [])]
    assert cli.main(argv) == 0
    bar, printed = err.getvalue(), out.getvalue()
    assert "test accuracy" in printed
    if quiet:
        assert bar == "" and not EPOCH_LINE.search(printed) and HEADER not in printed
    else:
        assert "epoch 1/1" in bar and "loss=" in bar and "acc=" in bar and "val_acc=" in bar
        # both on the same terminal: the bar alone; stdout to a file: the lines there too
        assert bool(EPOCH_LINE.search(printed)) is (not stdout_tty)


def test_one_line_per_epoch_without_a_terminal_and_no_files_without_output_dir(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *FAST, "--output-dir", ""]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # pytest's captured stderr is not a TTY: no bar
    lines = captured.out.splitlines()
    assert lines[0].startswith(HEADER), lines  # what the loss is, once
    assert EPOCH_LINE.match(lines[1]), lines
    assert lines[2].startswith("test accuracy") and len(lines) == 3
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
    missing = tmp_path / "nope.npz"
    assert cli.main([*argv[:-2], "--resume", str(missing), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        "jsoftmax train: error: --resume must name an existing checkpoint file; "
        f"got {str(missing)!r}\n"
    )


TWO = [*FAST[:2], "--epochs", "2", *FAST[4:]]  # FAST, but two epochs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch run of TWO: its folder, to copy (checkpoints of epochs 1 and 2)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", *TWO, "--output-dir", str(out), "--quiet"]) == 0
    return out


def _copy_run(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def test_resume_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path)
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main(["train", *TWO, "--output-dir", str(out), "--resume"]) == 0
    stdout = capsys.readouterr().out.splitlines()
    newest = out / "checkpoints" / "epoch_0002.npz"
    assert stdout[0] == (
        f"resuming from {newest} (epoch 2 of 2): the run is finished, nothing to train"
    )
    assert stdout[1].startswith("test accuracy") and len(stdout) == 2  # no "written to"
    test = json.loads(before[out / "metrics.json"])["test"]
    assert f"test accuracy {test['accuracy']:.4f} and loss {test['loss']:.4f}" in stdout[1]
    # metrics.json (with its timings), the plot and the checkpoints: byte for byte as they were
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_says_where_from_and_what_is_left(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path)
    (out / "checkpoints" / "epoch_0002.npz").unlink()
    capsys.readouterr()
    assert cli.main(["train", *TWO, "--output-dir", str(out), "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = out / "checkpoints" / "epoch_0001.npz"
    assert lines[0] == f"resuming from {first} (epoch 1 of 2): 1 epoch(s) left"
    assert lines[1].startswith("training 1 epoch(s) of 5 steps")
    assert lines[2].startswith("epoch 2/2: train loss ")  # only epoch 2 trained
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history == json.loads((finished_run / "metrics.json").read_text())["history"]


def test_a_run_cannot_be_extended_nor_resumed_with_other_layers(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path)
    before = (out / "metrics.json").read_bytes()
    newest = out / "checkpoints" / "epoch_0002.npz"
    more = [*FAST[:2], "--epochs", "3", *FAST[4:], "--output-dir", str(out), "--resume"]
    assert cli.main(["train", *more]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"jsoftmax train: error: cannot resume from {newest}: it was trained with other "
        "settings (epochs: checkpoint has 2, flags say 3); resume with the checkpoint's: "
        "--epochs 2; a run cannot be extended: its learning-rate schedule (warm-up, then a "
        "cosine decay to 0 at the last epoch) is fixed by epochs, so to train longer start a "
        "new run with more epochs\n"
    )
    wider = [*TWO, "--hidden-sizes", "16,16", "--output-dir", str(out), "--resume"]
    assert cli.main(["train", *wider]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"jsoftmax train: error: cannot resume from {newest}: it was trained with other "
        "settings (hidden_sizes: checkpoint has (8,), flags say (16, 16)); resume with the "
        "checkpoint's: --hidden-sizes 8\n"
    )
    assert (out / "metrics.json").read_bytes() == before


def test_corrupt_newest_checkpoint_names_the_previous_one(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path)
    newest, previous = (out / "checkpoints" / f"epoch_000{e}.npz" for e in (2, 1))
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    argv = ["train", *TWO, "--output-dir", str(out), "--quiet"]
    assert cli.main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jsoftmax train: error: {newest}: not a readable checkpoint")
    assert err.endswith(
        f"; the previous checkpoint, {previous} (epoch 1), is intact: --resume {previous}\n"
    )
    assert err.count("\n") == 1
    assert cli.main([*argv, "--resume", str(previous)]) == 0  # and resuming from it works
    capsys.readouterr()
    previous.write_bytes(b"garbage")
    newest.write_bytes(b"garbage too")  # (the resumed run had rewritten it)
    assert cli.main([*argv, "--resume"]) == 1
    assert capsys.readouterr().err.endswith(
        f"; there is no intact earlier checkpoint in {out / 'checkpoints'}\n"
    )


def _interrupt_at(monkeypatch, call: int) -> None:
    """Make the training step raise KeyboardInterrupt (Ctrl-C) on its ``call``-th call."""
    from jsoftmax.train import loop

    real = loop.make_train_step

    def make_train_step(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def interruptible(state, batch):
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt
            return step(state, batch)

        return interruptible

    monkeypatch.setattr(loop, "make_train_step", make_train_step)


def test_ctrl_c_is_one_line_and_exit_130_then_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", *TWO, "--output-dir", str(out), "--quiet"]
    _interrupt_at(monkeypatch, 7)  # 5 steps per epoch: in epoch 2
    assert cli.main(argv) == 130
    captured = capsys.readouterr()
    saved = out / "checkpoints" / "epoch_0001.npz"
    assert captured.err == (
        f"jsoftmax train: interrupted during epoch 2 of 2; epoch 1 is saved in {saved}: "
        "continue with the same flags and --resume\n"
    )
    assert "Traceback" not in captured.out
    monkeypatch.undo()
    assert cli.main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming from {saved} (epoch 1 of 2)")
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "epoch_0001.npz", "epoch_0002.npz",
    ]  # fmt: skip


def test_ctrl_c_without_checkpoints_or_before_training(tmp_path, capsys, monkeypatch):
    _interrupt_at(monkeypatch, 2)
    assert cli.main(["train", *FAST, "--output-dir", "", "--quiet"]) == 130
    assert capsys.readouterr().err == (
        "jsoftmax train: interrupted during epoch 1 of 1; no checkpoint of this run was saved "
        "(--output-dir '' saves none)\n"
    )
    from jsoftmax.train import loop

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "load_dataset", ctrl_c)
    assert cli.main(["train", *FAST, "--output-dir", "", "--quiet"]) == 130
    assert capsys.readouterr().err == (
        "jsoftmax train: interrupted outside the training epochs (loading, compiling or the "
        "final evaluation)\n"
    )


def test_readme_states_how_many_checkpoints_are_kept_and_that_runs_cannot_be_extended():
    readme = (REPO / "README.md").read_text()
    assert f"keeps the {Config().keep_checkpoints} newest checkpoints" in readme
    assert "cannot be extended" in readme


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
