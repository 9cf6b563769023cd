"""Tests for jsoftmax.train: config, model, loss, optimiser, steps, checkpoints and the loop."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jsoftmax.train import (
    Config,
    TrainResult,
    TrainState,
    checkpoints,
    eval_step,
    get_config,
    init_mlp,
    init_train_state,
    loss_fn,
    make_optimizer,
    make_train_step,
    mlp_apply,
    train_and_evaluate,
    train_step,
)
from jsoftmax.train.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from jsoftmax.train.config import ConfigError
from jsoftmax.train.loop import ResumeMismatchError
from jsoftmax.train.model import he_init

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden_sizes": (16,), "epochs": 2, "quiet": True, "keep_checkpoints": 0}


# Jitted once per shape: tests that only need parameters or a state should not pay for
# compiling every primitive of an eager run separately.
_init_mlp = jax.jit(init_mlp, static_argnums=1)
_init_state = jax.jit(init_train_state, static_argnums=(1, 2))
_apply = jax.jit(mlp_apply, static_argnames="activation")


def params_of(seed, sizes):
    return _init_mlp(jax.random.key(seed), tuple(sizes))


def state_of(seed, sizes, tx):
    return _init_state(jax.random.key(seed), tuple(sizes), tx)


def small_config(out_dir, **overrides) -> Config:
    return get_config(output_dir=str(out_dir), **{**SMALL, **overrides})


def batch_of(seed, n, features=8, classes=5, n_masked=0, dtype=np.float32):
    """A NumPy batch (no eager JAX ops to compile) whose last ``n_masked`` rows are padding."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, features)).astype(dtype),
        "y": rng.integers(0, classes, n).astype(np.int32),
        "mask": np.arange(n) < n - n_masked,
    }


def reference_loss(params, batch, activation, label_smoothing):
    """Plain autodiff cross-entropy: log_softmax, smoothed one-hot targets, masked mean."""
    h = batch["x"]
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None, :]
        if i < len(params) - 1:
            h = jax.nn.relu(h) if activation == "relu" else jax.nn.gelu(h)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["y"], h.shape[-1]), label_smoothing)
    per_example = -jnp.sum(targets * jax.nn.log_softmax(h), axis=-1)
    mask = batch["mask"]
    return jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.sum(mask)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


def bad(field, value, error, fragment, id=None):
    """One row of BAD_VALUES, its id ``field=value`` unless given."""
    return pytest.param(field, value, error, fragment, id=id or f"{field}={value!r}")


# (field, bad value, exception, fragment of what the message says the field must be); every
# field of Config has at least one row (test_every_config_field_has_a_bad_value_row)
BAD_VALUES = [
    bad("data", "cifar", ValueError, "'digits' or 'mnist'"),
    bad("data", 1, TypeError, "'digits' or 'mnist'"),
    bad("data_dir", 3, TypeError, "a folder path"),
    bad("data_dir", b"/data", TypeError, "a folder path"),
    bad("data_dir", "/da\0ta", ValueError, "without NUL characters", id="data_dir=NUL"),
    bad("val_fraction", 0.0, ValueError, "in (0, 1)"),
    bad("val_fraction", 1.0, ValueError, "in (0, 1)"),
    bad("val_fraction", math.nan, ValueError, "finite"),
    bad("val_fraction", "0.1", TypeError, "a number in (0, 1)"),
    bad("val_fraction", True, TypeError, "a number in (0, 1)"),
    bad("test_fraction", -0.1, ValueError, "in (0, 1)"),
    bad("test_fraction", None, TypeError, "a number in (0, 1)"),
    bad("split_seed", -1, ValueError, "a non-negative int"),
    bad("split_seed", 0.5, TypeError, "a non-negative int"),
    bad("split_seed", "0", TypeError, "a non-negative int"),
    bad("hidden_sizes", 16, TypeError, "a tuple of positive ints"),
    bad("hidden_sizes", "16", TypeError, "a tuple of positive ints"),
    bad("hidden_sizes", (16, True), TypeError, "a tuple of positive ints"),
    bad("hidden_sizes", (16, 2.0), TypeError, "a tuple of positive ints"),
    bad("hidden_sizes", (16, 0), ValueError, "a tuple of positive ints"),
    bad("activation", "tanh", ValueError, "one of ('relu', 'gelu')"),
    bad("activation", None, TypeError, "one of ('relu', 'gelu')"),
    bad("seed", -1, ValueError, "a non-negative int below 2**32"),
    bad("seed", 2**32, ValueError, "a non-negative int below 2**32"),
    bad("seed", 1.5, TypeError, "a non-negative int"),
    bad("seed", "0", TypeError, "a non-negative int"),
    bad("seed", True, TypeError, "a non-negative int"),
    bad("optimizer", "lion", ValueError, "'adamw' or 'sgd'"),
    bad("optimizer", 0, TypeError, "'adamw' or 'sgd'"),
    bad("learning_rate", math.inf, ValueError, "finite"),
    bad("learning_rate", -math.inf, ValueError, "finite"),
    bad("learning_rate", math.nan, ValueError, "finite"),
    bad("learning_rate", 0.0, ValueError, "> 0"),
    bad("learning_rate", -1e-3, ValueError, "> 0"),
    bad("learning_rate", "3e-3", TypeError, "a number > 0"),
    bad("learning_rate", True, TypeError, "a number > 0"),
    bad("warmup_epochs", -1.0, ValueError, "in [0, epochs=30]"),
    bad("warmup_epochs", 31, ValueError, "in [0, epochs=30]"),
    bad("warmup_epochs", math.inf, ValueError, "finite"),
    bad("warmup_epochs", "1", TypeError, "a number in [0, epochs=30]"),
    bad("momentum", 1.0, ValueError, "in [0, 1)"),
    bad("momentum", -0.1, ValueError, "in [0, 1)"),
    bad("momentum", 10**400, ValueError, "finite", id="momentum=10**400"),
    bad("momentum", None, TypeError, "a number in [0, 1)"),
    bad("weight_decay", -1.0, ValueError, ">= 0"),
    bad("weight_decay", math.inf, ValueError, "finite"),
    bad("weight_decay", "0", TypeError, "a number >= 0"),
    bad("label_smoothing", 1.5, ValueError, "in [0, 1]"),
    bad("label_smoothing", -0.1, ValueError, "in [0, 1]"),
    bad("label_smoothing", np.float32("nan"), ValueError, "finite"),
    bad("label_smoothing", "0.1", TypeError, "a number in [0, 1]"),
    bad("batch_size", 0, ValueError, "a positive int"),
    bad("batch_size", True, TypeError, "a positive int"),
    bad("batch_size", 64.0, TypeError, "a positive int"),
    bad("batch_size", "64", TypeError, "a positive int"),
    bad("eval_batch_size", -1, ValueError, "a positive int"),
    bad("eval_batch_size", 1.5, TypeError, "a positive int"),
    bad("epochs", 0, ValueError, "a positive int"),
    bad("epochs", 2.5, TypeError, "a positive int"),
    bad("epochs", np.float64(3.0), TypeError, "a positive int"),
    bad("output_dir", 1, TypeError, "a folder path"),
    bad("output_dir", b"runs", TypeError, "a folder path"),
    bad("keep_checkpoints", -1, ValueError, "a non-negative int"),
    bad("keep_checkpoints", "3", TypeError, "a non-negative int"),
    bad("keep_checkpoints", 1.5, TypeError, "a non-negative int"),
    bad("keep_checkpoints", True, TypeError, "a non-negative int"),
    bad("resume", 1, TypeError, "a checkpoint path"),
    bad("resume", "ckpt\0.npz", ValueError, "without NUL characters", id="resume=NUL"),
    bad("plot", 1, TypeError, "a bool"),
    bad("plot", "no", TypeError, "a bool"),
    bad("quiet", None, TypeError, "a bool"),
]


@pytest.mark.parametrize(("field", "value", "error", "fragment"), BAD_VALUES)
def test_config_rejects_bad_field(field, value, error, fragment):
    """Wrong types raise TypeError, wrong values ValueError; the message names the field."""
    with pytest.raises(error) as info:
        get_config(**{field: value})
    message = str(info.value)
    # out of range: ConfigError, a ValueError holding the parts the command line rewords
    assert type(info.value) is (ConfigError if error is ValueError else TypeError)
    if error is ValueError:
        e = info.value
        assert (e.field, e.got) == (field, repr(value))
        assert e.requirement == "must be " + message.split(" must be ", 1)[1].split("; got")[0]
    assert message.startswith(f"Config.{field} must be "), message
    assert fragment in message, message
    assert f"; got {value!r}" in message, message  # and what it was given
    if error is TypeError:
        assert message.endswith(f"({type(value).__name__})"), message


def test_every_config_field_has_a_bad_value_row():
    covered = {row.values[0] for row in BAD_VALUES}
    assert covered == {f.name for f in dataclasses.fields(Config)}
    # a wrong type for every field, and a wrong value for every field that has a range
    for field in covered:
        errors = {row.values[2] for row in BAD_VALUES if row.values[0] == field}
        assert errors == ({TypeError} if field in ("output_dir", "plot", "quiet") else
                          {TypeError, ValueError}), field  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "field", "match"),
    [
        ({"data": "mnist"}, "data_dir", "the folder holding the MNIST IDX files"),
        ({"data": "mnist", "data_dir": ""}, "data_dir", "the folder holding the MNIST IDX"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction",
         r"< 0\.5 \(val_fraction \+ test_fraction < 1\); got 0\.5"),
        ({"warmup_epochs": 3, "epochs": 2}, "warmup_epochs", r"in \[0, epochs=2\]; got 3"),
        ({"resume": "latest", "output_dir": ""}, "resume", "not 'latest', when output_dir"),
        ({"resume": "latest", "output_dir": None}, "resume", "not 'latest', when output_dir"),
    ],
    ids=["mnist-no-data_dir", "mnist-empty-data_dir", "fractions-sum-to-1",
         "warmup-longer-than-run", "latest-without-output_dir", "latest-with-None-output_dir"],
)  # fmt: skip
def test_config_rejects_inconsistent_fields(overrides, field, match):
    with pytest.raises(ConfigError, match=rf"^Config\.{field} must be .*{match}"):
        get_config(**overrides)


def test_checks_across_fields_can_blame_either_field():
    """Which field is wrong depends on which one the user set; the error carries both."""
    with pytest.raises(ConfigError) as info:
        get_config(val_fraction=0.85)  # test_fraction keeps its default 0.2
    e = info.value
    assert (e.field, e.got) == ("test_fraction", "0.2")
    assert e.instead == {
        "val_fraction": ("must be < 0.8 (val_fraction + test_fraction < 1)", "0.85")
    }
    with pytest.raises(ConfigError) as info:
        get_config(warmup_epochs=3.0, epochs=2)
    assert (info.value.field, info.value.requirement) == (
        "warmup_epochs",
        "must be in [0, epochs=2]",
    )
    assert info.value.instead == {"epochs": ("must be a positive int >= warmup_epochs=3.0", "2")}
    # epochs is checked before the warm-up it bounds: 0 epochs is an epochs error
    for warmup in (1.0, 0.5, 0):
        with pytest.raises(ConfigError, match=r"^Config\.epochs must be a positive int; got 0$"):
            get_config(epochs=0, warmup_epochs=warmup)


def test_default_and_typical_configs_validate():
    assert get_config() == Config()
    typical = {
        "data": "mnist", "data_dir": "/data/mnist", "val_fraction": 0.05, "split_seed": 1,
        "hidden_sizes": (512, 128), "activation": "relu", "seed": 7, "optimizer": "sgd",
        "learning_rate": 0.05, "warmup_epochs": 0, "momentum": 0.0, "weight_decay": 0,
        "label_smoothing": 0.0, "batch_size": 128, "eval_batch_size": 1, "epochs": 10,
        "output_dir": "runs/mnist", "keep_checkpoints": 0, "resume": "latest",
        "plot": False, "quiet": True,
    }  # fmt: skip
    config = get_config(**typical)
    assert {k: getattr(config, k) for k in typical} == typical  # stored as given
    # the edges of every range are valid
    get_config(warmup_epochs=30, label_smoothing=1.0, seed=2**32 - 1, hidden_sizes=(),
               val_fraction=1e-3, test_fraction=0.99, output_dir="", resume="")  # fmt: skip
    get_config(output_dir=None, resume="runs/x/checkpoints/epoch_0003.npz")


def test_config_accepts_numpy_scalars_and_paths_as_plain_values():
    config = get_config(
        seed=np.int64(3), split_seed=np.uint32(2), batch_size=np.int32(32), epochs=np.int64(4),
        learning_rate=np.float32(0.5), momentum=np.float64(0.5), warmup_epochs=np.int64(1),
        hidden_sizes=[np.int64(16), 8], output_dir=Path("runs") / "x",
        data_dir=Path("/data"), plot=np.bool_(False),
    )  # fmt: skip
    assert config == get_config(
        seed=3, split_seed=2, batch_size=32, epochs=4, learning_rate=0.5, momentum=0.5,
        warmup_epochs=1, hidden_sizes=(16, 8), output_dir=os.path.join("runs", "x"),
        data_dir=os.fspath(Path("/data")), plot=False,
    )  # fmt: skip
    assert type(config.seed) is int and type(config.hidden_sizes[0]) is int
    assert type(config.learning_rate) is float and type(config.plot) is bool
    assert type(config.output_dir) is str
    json.dumps(config.to_dict())  # still JSON-ready


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"val_fraction": 0.0002}, "Config.val_fraction must leave at least one validation "
         "example; got 0.0002, which splits the 1797 digits into 1438 train, 0 validation, "
         "359 test"),
        ({"test_fraction": 0.0002}, "Config.test_fraction must leave at least one test example; "
         "got 0.0002, which splits the 1797 digits into 1617 train, 180 validation, 0 test"),
        ({"val_fraction": 0.5003, "test_fraction": 0.4996}, "Config.val_fraction + "
         "test_fraction must leave at least one training example; got 0.5003 + 0.4996, which "
         "splits the 1797 digits into 0 train, 899 validation, 898 test"),
    ],
    ids=["empty-validation", "empty-test", "empty-train"],
)  # fmt: skip
def test_config_rejects_fractions_that_empty_a_digits_split(fractions, message):
    with pytest.raises(ValueError) as info:
        get_config(**fractions)
    assert str(info.value) == message
    # MNIST's size comes from its files: its loader checks its own split when it reads them
    get_config(data="mnist", data_dir="/data", **fractions)


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction"), [(0.1, 0.2), (0.0003, 0.5), (0.33, 0.0006), (0.5, 0.4994)]
)
def test_digits_split_sizes_match_the_loader(val_fraction, test_fraction):
    """The sizes Config checks up front are the ones load_digits cuts (1,797 images)."""
    from jsoftmax.train.data import DIGITS_SIZE, load_digits, split_sizes

    ds = load_digits(val_fraction=val_fraction, test_fraction=test_fraction)
    assert len(ds.train) + len(ds.val) + len(ds.test) == DIGITS_SIZE
    assert split_sizes(DIGITS_SIZE, val_fraction, test_fraction) == {
        "train": len(ds.train), "validation": len(ds.val), "test": len(ds.test)
    }  # fmt: skip


def test_run_checks_files_before_loading_anything(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=r"Config\.resume must name an existing checkpoint"):
        train_and_evaluate(small_config(tmp_path, resume=str(missing)))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError, match=r"Config\.output_dir must be a folder"):
        train_and_evaluate(small_config(a_file))
    with pytest.raises(TypeError, match="config must be a Config; got dict"):
        train_and_evaluate(SMALL)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_config_defaults_and_dict():
    config = get_config()
    assert config == Config()
    assert config.optimizer == "adamw" and config.data == "digits"
    assert get_config(hidden_sizes=[32, 16]).hidden_sizes == (32, 16)  # lists become tuples
    hash(get_config(hidden_sizes=[32]))  # frozen and hashable, lists included
    d = config.to_dict()
    assert d["hidden_sizes"] == list(config.hidden_sizes)
    json.dumps(d)  # JSON-ready
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# model and loss
# --------------------------------------------------------------------------------------------


def test_init_mlp_shapes_and_he_scale():
    sizes = (400, 300, 10)
    params = init_mlp(jax.random.key(0), sizes)
    assert [(p["w"].shape, p["b"].shape) for p in params] == [
        ((400, 300), (300,)),
        ((300, 10), (10,)),
    ]
    assert all(p["w"].dtype == jnp.float32 and p["b"].dtype == jnp.float32 for p in params)
    assert all(not np.any(p["b"]) for p in params)
    w = np.asarray(params[0]["w"], np.float64)
    # He initialisation: variance 2 / fan_in (120,000 draws: the sample std is within ~0.3%)
    assert w.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert abs(w.mean()) < 0.01 * w.std()
    # truncated at two of the underlying normal's standard deviations
    assert np.abs(w).max() <= 2 * math.sqrt(2 / 400) / 0.8796256610342398 + 1e-6
    assert leaves_equal(params, init_mlp(jax.random.key(0), sizes))
    assert not np.array_equal(params[0]["w"], init_mlp(jax.random.key(1), sizes)[0]["w"])
    # each layer is JAX's variance-scaling initialiser drawn with its own split key
    keys = jax.random.split(jax.random.key(0), 2)
    for k, p in zip(keys, params, strict=True):
        np.testing.assert_array_equal(p["w"], he_init(k, p["w"].shape, jnp.float32))


@pytest.mark.parametrize(("fan_in", "fan_out"), [(64, 4096), (1024, 256)])
def test_he_init_has_std_sqrt_2_over_fan_in(fan_in, fan_out):
    """The variance-scaling initialiser: truncated normal, std sqrt(2 / fan_in), cut at 2 std.

    2**18 draws: the sample std is within ~0.2 % of the true one (rel=1 % is five of those).
    """
    w = np.asarray(he_init(jax.random.key(3), (fan_in, fan_out), jnp.float32), np.float64)
    std = math.sqrt(2 / fan_in)
    assert w.std() == pytest.approx(std, rel=0.01)
    assert abs(w.mean()) < 0.01 * std
    # the truncation: at two standard deviations of the underlying normal, whose own std is
    # 1.1368... times the truncated one; the tails beyond ~2 std of the result are populated
    bound = 2 * std / 0.8796256610342398
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() > 0.99 * bound
    assert np.mean(np.abs(w) > 2 * std) > 0.01


@pytest.mark.parametrize("sizes", [(64,), (64, 0, 10), (64, 2.5), ()])
def test_init_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="init_mlp: sizes must hold >= 2 positive ints"):
        init_mlp(jax.random.key(0), sizes)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_mlp_apply_matches_numpy(activation):
    params = params_of(1, (8, 6, 4, 3))
    x = np.asarray(jax.random.normal(jax.random.key(2), (5, 8)), np.float64)
    act = (lambda v: np.maximum(v, 0)) if activation == "relu" else _gelu_tanh
    h = x
    for i, p in enumerate(params):
        h = h @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)
        h = act(h) if i < len(params) - 1 else h
    out = _apply(params, x.astype(np.float32), activation=activation)
    assert out.shape == (5, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-6)


def test_mlp_apply_rejects_unknown_activation():
    params = params_of(0, (4, 2))
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'swish'"):
        mlp_apply(params, jnp.zeros((1, 4)), activation="swish")


@pytest.mark.parametrize(
    ("activation", "label_smoothing", "n_masked"),
    [("relu", 0.0, 0), ("gelu", 0.1, 3), ("relu", 0.3, 5)],
)
def test_loss_fn_value_and_grad_match_plain_reference(x64, activation, label_smoothing, n_masked):
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params_of(3, (8, 7, 5)))
    batch = batch_of(4, 11, n_masked=n_masked, dtype=np.float64)
    kw = {"activation": activation, "label_smoothing": label_smoothing}
    # jit each side whole: one compilation instead of one per eagerly run primitive
    ours = jax.jit(jax.value_and_grad(partial(loss_fn, **kw), has_aux=True))
    plain = jax.jit(jax.value_and_grad(partial(reference_loss, **kw)))
    (loss, logits), grads = ours(params, batch)
    ref, ref_grads = plain(params, batch)
    assert logits.shape == (11, 5)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)


def test_loss_fn_check_grads(x64):
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params_of(5, (6, 4, 3)))
    batch = batch_of(6, 7, features=6, classes=3, n_masked=2, dtype=np.float64)

    def f(p):
        return loss_fn(p, batch, activation="gelu", label_smoothing=0.2)[0]

    # First order: the loss's own second-order rule is checked in the loss tests; this checks
    # the model composed with it, where order 2 would triple the compile time of this file.
    check_grads(jax.jit(f), (params,), order=1, modes=["rev"])


def test_padding_rows_change_nothing():
    """Masked rows (the padding of a short batch) affect neither the loss nor the gradient."""
    params = params_of(7, (8, 16, 5))
    batch = batch_of(8, 12, n_masked=4)
    garbage = {k: v.copy() for k, v in batch.items()}
    garbage["x"][8:] = 1e3  # large but finite junk in the padding rows
    garbage["y"][8:] = 4
    trimmed = {k: v[:8] for k, v in batch.items()}
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, label_smoothing=0.1)[0]))
    g_batch, g_garbage, g_trimmed = (
        grad(params, batch),
        grad(params, garbage),
        grad(params, trimmed),
    )
    for a, b, c in zip(*map(jax.tree.leaves, (g_batch, g_garbage, g_trimmed)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# optimiser
# --------------------------------------------------------------------------------------------


def test_schedule_warmup_then_cosine():
    """With plain SGD the update of a unit gradient is minus the learning rate of that step."""
    config = get_config(
        optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.5,
        warmup_epochs=1.0, epochs=4,
    )  # fmt: skip
    tx = make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.zeros((2, 2))}
    state = tx.init(params)
    lrs = []
    for _ in range(41):
        updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
        lrs.append(-float(updates["w"][0, 0]))
    expected = [0.5 * t / 10 for t in range(10)] + [
        0.5 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 30)) for t in range(10, 41)
    ]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-7)
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.5) and lrs[40] == pytest.approx(0.0)


def test_schedule_all_warmup():
    config = get_config(optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.5,
                        warmup_epochs=2.0, epochs=2)  # fmt: skip
    tx = make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.zeros(())}
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(21):
        updates, state = update({"w": jnp.ones(())}, state, params)
        assert -float(updates["w"]) == pytest.approx(0.5 * t / 20, abs=1e-7)  # a pure ramp


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_only_on_weight_matrices(optimizer):
    config = get_config(
        optimizer=optimizer, weight_decay=0.25, learning_rate=0.1, epochs=2, momentum=0.0
    )
    tx = make_optimizer(config, steps_per_epoch=1)
    params = params_of(0, (3, 4, 2))
    params = [{"w": p["w"], "b": p["b"] + 1.0} for p in params]  # non-zero biases
    state = jax.jit(tx.init)(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(tx.update)
    updates, state = update(zero, state, params)  # step 0: learning rate 0 (warm-up)
    updates, state = update(zero, state, params)  # step 1: the peak rate 0.1
    for p, u in zip(params, updates, strict=True):
        np.testing.assert_allclose(u["w"], -0.1 * 0.25 * p["w"], rtol=1e-6)
        np.testing.assert_array_equal(u["b"], 0.0)


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_train_step_matches_plain_step_and_donates(optimizer):
    config = get_config(optimizer=optimizer, learning_rate=0.05, warmup_epochs=0.0, epochs=3)
    tx = make_optimizer(config, steps_per_epoch=4)
    state = state_of(9, (8, 16, 5), tx)
    batch = batch_of(10, 12, n_masked=5)

    @jax.jit
    def plain_step(state, batch):  # the same step written out with plain autodiff
        loss, grads = jax.value_and_grad(reference_loss)(state.params, batch, "gelu", 0.1)
        updates, _ = tx.update(grads, state.opt_state, state.params)
        return loss, optax.apply_updates(state.params, updates)

    loss, expected = plain_step(state, batch)

    pre_logits = _apply(state.params, batch["x"])
    correct = int(np.sum((np.argmax(pre_logits, -1) == batch["y"]) & batch["mask"]))

    old_leaf = state.params[0]["w"]
    new_state, metrics = train_step(state, batch, tx=tx, activation="gelu", label_smoothing=0.1)
    assert old_leaf.is_deleted()  # the state was donated
    assert isinstance(new_state, TrainState) and int(new_state.step) == 1
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    # metrics describe the batch under the parameters before the update, real rows only
    assert int(metrics["count"]) == 7
    assert int(metrics["correct"]) == correct
    assert float(metrics["accuracy"]) == pytest.approx(correct / 7)


def test_make_train_step_is_train_step_compiled_once(caplog):
    """The step built for one optimiser: train_step's numbers, donation, one compilation."""
    config = get_config(learning_rate=0.05, warmup_epochs=0.0, epochs=3)
    tx = make_optimizer(config, steps_per_epoch=4)
    step = make_train_step(tx, activation="relu", label_smoothing=0.1)
    batches = [batch_of(seed, 12, n_masked=3) for seed in (20, 21, 22)]
    ours, theirs = state_of(9, (8, 16, 5), tx), state_of(9, (8, 16, 5), tx)
    # count compilations from JAX's own log (the jit object's private cache counter reads 0
    # when an earlier test in the same process has left the C++ fast path off)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        for batch in batches:
            old_leaf = ours.params[0]["w"]
            ours, m = step(ours, batch)
            assert old_leaf.is_deleted()  # the state was donated
            theirs, m_ref = train_step(theirs, batch, tx=tx, activation="relu", label_smoothing=0.1)
            assert leaves_equal(m, m_ref)
    assert int(ours.step) == 3 and leaves_equal(ours, theirs)
    compiled = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    assert len(compiled) == 1  # one compilation for every call on batches of one shape


def test_eval_step_counts_only_real_examples():
    params = params_of(11, (8, 5))
    batch = batch_of(12, 10, n_masked=6)
    m = eval_step(params, batch, label_smoothing=0.0)
    ref = jax.jit(reference_loss, static_argnums=(2, 3))(params, batch, "gelu", 0.0)
    np.testing.assert_allclose(m["loss"], ref, rtol=1e-6)
    assert int(m["count"]) == 4
    logits = _apply(params, batch["x"][:4])
    assert int(m["correct"]) == int(np.sum(np.argmax(logits, -1) == batch["y"][:4]))


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


@functools.cache
def _state_and_tx():
    """One small trained state (non-trivial moments and count), shared by the checkpoint tests."""
    tx = make_optimizer(get_config(epochs=2), steps_per_epoch=3)
    state = state_of(13, (6, 5, 3), tx)
    batch = batch_of(14, 4, features=6, classes=3)
    state, _ = train_step(state, batch, tx=tx)
    return state, tx


def test_checkpoint_round_trip_is_exact(tmp_path):
    state, tx = _state_and_tx()
    tree = {"state": state, "rng": jax.random.key(42), "rbg": jax.random.key(1, impl="rbg")}
    path = tmp_path / "ckpt" / "epoch_0003.npz"
    save_checkpoint(path, tree, metadata={"epoch": 3, "note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["epoch_0003.npz"]  # no temp files left

    target = {
        "state": state_of(0, (6, 5, 3), tx),
        "rng": jax.random.key(0),
        "rbg": jax.random.key(0, impl="rbg"),
    }
    restored, meta = load_checkpoint(path, target)
    assert meta == {"epoch": 3, "note": "x"}
    assert isinstance(restored["state"], TrainState)
    assert leaves_equal(restored["state"], state)
    for name in ("rng", "rbg"):
        assert restored[name].dtype == tree[name].dtype  # a typed key again, same impl
        np.testing.assert_array_equal(
            jax.random.key_data(restored[name]), jax.random.key_data(tree[name])
        )
    manifest = checkpoints.read_manifest(path)
    assert [e["path"] for e in manifest["leaves"]][:2] == ["['rbg']", "['rng']"]


def _saved(tmp_path):
    state, tx = _state_and_tx()
    path = tmp_path / "epoch_0001.npz"
    save_checkpoint(path, state, metadata={"epoch": 1})
    return path, state_of(0, (6, 5, 3), tx)


def test_checkpoint_truncated_or_garbage_file(tmp_path):
    path, target = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(path, target)
    assert str(path) in str(info.value)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path, target)
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.npz"):
        load_checkpoint(tmp_path / "nothing.npz", target)


def test_checkpoint_flipped_byte_is_detected(tmp_path):
    path, target = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    # find the stored bytes of the first weight matrix (np.savez does not compress) and flip one
    w = np.asarray(jax.device_get(_state_and_tx()[0].params[0]["w"])).tobytes()
    pos = bytes(data).find(w[:32])
    assert pos > 0
    data[pos + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, target)
    # the zip CRC or our SHA-256 catches it; either way the message names the file
    assert str(path) in str(info.value)
    assert "corrupt" in str(info.value)


def test_checkpoint_digest_mismatch_names_the_leaf(tmp_path):
    path, target = _saved(tmp_path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(arrays["__manifest__"].tobytes())
    name = next(e["name"] for e in manifest["leaves"] if e["path"] == ".params[1]['b']")
    arrays[name] = arrays[name] + 1  # a consistent zip with a wrong array: only SHA-256 sees it
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match=r"leaf \.params\[1\]\['b'\] fails its SHA-256"):
        load_checkpoint(path, target)


def test_checkpoint_structure_and_shape_mismatch(tmp_path):
    path, _ = _saved(tmp_path)
    tx = _state_and_tx()[1]
    deeper = state_of(0, (6, 5, 5, 3), tx)
    with pytest.raises(CheckpointError, match=r"missing leaves: \[.*\"\.params\[2\]\['b'\]\""):
        load_checkpoint(path, deeper)
    wider = state_of(0, (6, 7, 3), tx)
    with pytest.raises(CheckpointError, match=r"leaf .* is float32\[5\] but the model expects"):
        load_checkpoint(path, wider)


def test_checkpoint_refuses_objects_and_keeps_old_file(tmp_path):
    path, _ = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"cannot store leaf .*object"):
        save_checkpoint(path, {"bad": np.array([{"a": 1}], dtype=object)})
    assert path.read_bytes() == before  # the failed save left the old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.npz"]


def test_checkpoint_listing_and_pruning(tmp_path):
    for epoch in (3, 1, 12, 2):
        save_checkpoint(checkpoints.checkpoint_path(tmp_path, epoch), {"a": np.zeros(1)})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [e for e, _ in checkpoints.list_checkpoints(tmp_path)] == [1, 2, 3, 12]
    assert checkpoints.latest_checkpoint(tmp_path).endswith("epoch_0012.npz")
    checkpoints.prune_checkpoints(tmp_path, keep=2)
    assert [e for e, _ in checkpoints.list_checkpoints(tmp_path)] == [3, 12]
    assert checkpoints.latest_checkpoint(tmp_path / "absent") is None


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train_and_evaluate(small_config(out))


def test_run_returns_the_metrics_and_the_final_state(two_epochs):
    out, result = two_epochs
    assert isinstance(result, TrainResult) and isinstance(result.state, TrainState)
    metrics, state = result  # a NamedTuple: it unpacks too
    assert metrics is result.metrics and int(state.step) == 2 * math.ceil(1258 / 64)
    # the returned state is the final one: bitwise the last checkpoint
    tx = make_optimizer(small_config(out), steps_per_epoch=20)
    saved, _ = load_checkpoint(
        out / "checkpoints" / "epoch_0002.npz", state_of(0, (64, 16, 10), tx)
    )
    assert leaves_equal(jax.device_get(state), saved)


def test_run_writes_metrics_plot_and_checkpoints(two_epochs):
    out, result = two_epochs
    metrics = result.metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for h in metrics["history"]:
        assert 0.0 <= h["train_accuracy"] <= 1.0 and 0.0 <= h["val_accuracy"] <= 1.0
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
    assert metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["dataset"] == {"name": "digits", "train": 1258, "val": 180, "test": 359,
                                  "features": 64}  # fmt: skip
    assert metrics["devices"] == jax.device_count()
    # the test accuracy is a whole number of the 359 test images
    assert metrics["test"]["accuracy"] * 359 == pytest.approx(
        round(metrics["test"]["accuracy"] * 359)
    )

    on_disk = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in on_disk.items() if k != "timing"} == {
        k: v for k, v in metrics.items() if k != "timing"
    }
    assert on_disk["config"] == small_config(out).to_dict()
    png = (out / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 500 and height > 200
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0001.npz", "epoch_0002.npz",
    ]  # fmt: skip
    meta = checkpoints.read_manifest(out / "checkpoints" / "epoch_0002.npz")["metadata"]
    assert meta["epoch"] == 2 and meta["history"] == metrics["history"]
    assert meta["step"] == 2 * math.ceil(1258 / 64)


def test_same_seed_same_metrics(two_epochs, tmp_path):
    _, first = two_epochs
    second = train_and_evaluate(small_config(tmp_path, plot=False))
    assert second.metrics["history"] == first.metrics["history"]  # exact, not approximate
    assert second.metrics["test"] == first.metrics["test"]
    assert leaves_equal(jax.device_get(second.state), jax.device_get(first.state))


def test_resume_ends_at_bitwise_the_same_parameters(two_epochs, tmp_path, capsys):
    out, result = two_epochs
    full = result.metrics
    first = out / "checkpoints" / "epoch_0001.npz"
    capsys.readouterr()
    resumed = train_and_evaluate(small_config(tmp_path, resume=str(first))).metrics
    assert capsys.readouterr().out == f"resuming from {first} (epoch 1 of 2): 1 epoch(s) left\n"
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"]
    # only epoch 2 was trained again
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0002.npz"]
    tx = make_optimizer(small_config(tmp_path), steps_per_epoch=20)
    target = state_of(0, (64, 16, 10), tx)
    a, meta_a = load_checkpoint(out / "checkpoints" / "epoch_0002.npz", target)
    b, meta_b = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.npz", target)
    assert leaves_equal(a, b)  # parameters and optimiser state, bit for bit
    assert meta_a["step"] == meta_b["step"]


def test_resume_latest_and_its_errors(two_epochs, tmp_path):
    out, _ = two_epochs
    with pytest.raises(FileNotFoundError, match="--resume latest: no checkpoint in"):
        train_and_evaluate(small_config(tmp_path, resume="latest"))
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    from jsoftmax.train.loop import _resume_path

    assert _resume_path(small_config(tmp_path, resume="latest")) == str(
        tmp_path / "checkpoints" / "epoch_0002.npz"
    )
    ckpt = str(out / "checkpoints" / "epoch_0001.npz")
    with pytest.raises(ResumeMismatchError) as info:
        train_and_evaluate(small_config(tmp_path, resume=ckpt, learning_rate=0.01))
    assert str(info.value) == (
        f"cannot resume from {ckpt}: it was trained with other settings (learning_rate: "
        "checkpoint has 0.003, config has 0.01); resume with the checkpoint's settings"
    )
    # other layer sizes: the setting that differs, not a dump of the leaves
    with pytest.raises(ResumeMismatchError) as info:
        train_and_evaluate(small_config(tmp_path, resume=ckpt, hidden_sizes=(16, 16), seed=1))
    assert info.value.differences == [("hidden_sizes", (16,), (16, 16)), ("seed", 0, 1)]
    assert "hidden_sizes: checkpoint has (16,), config has (16, 16), seed: " in str(info.value)
    with pytest.raises(ResumeMismatchError, match="a run cannot be extended: its learning-rate"):
        train_and_evaluate(small_config(tmp_path, resume=ckpt, epochs=3))
    assert isinstance(info.value, CheckpointError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # nothing written


def test_resume_from_a_corrupt_newest_checkpoint_names_the_previous(two_epochs, tmp_path):
    out, _ = two_epochs
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    newest, previous = (tmp_path / "checkpoints" / f"epoch_000{e}.npz" for e in (2, 1))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(small_config(tmp_path, resume="latest"))
    assert str(info.value).startswith(f"{newest}: not a readable checkpoint")
    assert str(info.value).endswith(
        f"; the previous checkpoint, {previous} (epoch 1), is intact: --resume {previous}"
    )
    # a flipped byte inside an array: caught by the digests, same pointer back
    newest.write_bytes(data)
    w = np.load(newest)["leaf_00001"].tobytes()
    pos = data.find(w[:64])
    newest.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :])
    with pytest.raises(CheckpointError, match=r"corrupt.*; the previous checkpoint, .*is intact"):
        train_and_evaluate(small_config(tmp_path, resume="latest"))


def test_a_new_run_replaces_the_checkpoints_of_an_earlier_one(two_epochs, tmp_path, capsys):
    """Left there, a finished run's epoch 2 would be what --resume picks after a new run's
    epoch 1, and keep_checkpoints=1 would delete the new epoch 1 instead of the old epoch 2."""
    out, _ = two_epochs
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    train_and_evaluate(small_config(tmp_path, epochs=1, warmup_epochs=0.5, keep_checkpoints=1,
                                    plot=False))  # fmt: skip
    assert capsys.readouterr().out == (
        f"removed 2 checkpoint(s) of an earlier run from {tmp_path / 'checkpoints'} (epochs 1, 2)\n"
    )
    (epoch, path), *rest = checkpoints.list_checkpoints(tmp_path / "checkpoints")
    assert epoch == 1 and not rest
    assert checkpoints.read_manifest(path)["metadata"]["config"]["epochs"] == 1


def _write_idx(path, a):
    header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def test_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(data / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 5, 5)))
        _write_idx(data / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    metrics = train_and_evaluate(
        small_config(tmp_path / "out", data="mnist", data_dir=str(data), epochs=1,
                     warmup_epochs=0.5, keep_checkpoints=1, plot=False, batch_size=16)
    ).metrics  # fmt: skip
    assert metrics["dataset"] == {"name": "mnist", "train": 45, "val": 5, "test": 20,
                                  "features": 25}  # fmt: skip
    assert not (tmp_path / "out" / "metrics.png").exists()
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["epoch_0001.npz"]


def test_multi_device_matches_one_device(tmp_path):
    """8 faked CPU devices give the 1-device result up to float32 round-off.

    Not bit for bit: on 8 devices each computes a partial gradient sum over its shard of the
    batch and the partial sums are then added (an all-reduce), a different order of additions
    from the single device's one sum. The parameters then differ by a few float32 ulps.
    """
    env = dict(os.environ)
    # must be set before JAX starts, hence the subprocess
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_multidevice_train_worker.py"), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    # 60 examples padded to 64 rows, 8 rows per device; the state stays replicated
    assert result["layout"] == {"batch_rows_per_shard": [8], "batch_shards": 8,
                                "state_replicated": True, "count": 60}  # fmt: skip
    one, eight = result["runs"]["d1"], result["runs"]["d8"]
    assert one["devices"] == 1 and eight["devices"] == 8
    for h1, h8 in zip(one["history"], eight["history"], strict=True):
        assert h1["train_accuracy"] == h8["train_accuracy"]
        assert h1["val_accuracy"] == h8["val_accuracy"]
        assert h8["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-6)
        assert h8["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-6)
    assert eight["test"]["accuracy"] == one["test"]["accuracy"]
    assert eight["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-6)

    tx = make_optimizer(get_config(epochs=2), steps_per_epoch=1)
    target = state_of(0, (64, 16, 10), tx)
    a, _ = load_checkpoint(tmp_path / "d1" / "checkpoints" / "epoch_0002.npz", target)
    b, _ = load_checkpoint(tmp_path / "d8" / "checkpoints" / "epoch_0002.npz", target)
    assert int(a.step) == int(b.step) == 2 * math.ceil(1258 / 60)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
