"""Tests for jsoftmax.train.data: the digits split, the MNIST IDX reader, host batches."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from jsoftmax.train.data import (
    MNIST_FILES,
    DataError,
    Split,
    host_batches,
    load_dataset,
    load_digits,
    load_mnist,
    read_idx,
)
from jsoftmax.train.extras import MissingExtraError

# --------------------------------------------------------------------------------------------
# helpers: IDX files written by the tests themselves
# --------------------------------------------------------------------------------------------

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(a: np.ndarray) -> bytes:
    code = _CODES[a.dtype.type]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes) -> str:
    path = str(path)
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def fake_mnist(folder, *, n_train=40, n_test=12, rows=4, cols=3, gz=(False, True, True, False)):
    """Four small IDX files with random pixels; ``gz`` picks which are gzipped."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for (role, a), zipped in zip(arrays.items(), gz, strict=True):
        name = MNIST_FILES[role] + (".gz" if zipped else "")
        write(folder / name, idx_bytes(a))
    return arrays


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_digits_splits_partition_the_dataset():
    ds = load_digits(val_fraction=0.1, test_fraction=0.2, seed=0)
    x_all, y_all = sk_load_digits(return_X_y=True)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1258, 180, 359)
    assert ds.num_features == 64 and ds.num_classes == 10
    # One scalar affine map standardises every split; undo it (raw pixel 0 is the smallest value
    # in the training split, 16 the largest) and the three splits together are exactly the
    # original images with their labels, each once.
    lo, hi = ds.train.x.min(), ds.train.x.max()
    rows = []
    for split in (ds.train, ds.val, ds.test):
        raw = (split.x.astype(np.float64) - lo) / (hi - lo) * 16.0
        np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)
        rows.append(np.column_stack([np.round(raw), split.y]))
    np.testing.assert_array_equal(
        _sorted_rows(np.concatenate(rows)), _sorted_rows(np.column_stack([x_all, y_all]))
    )


def test_digits_normalised_with_train_statistics_only():
    ds = load_digits(seed=3)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int32
    np.testing.assert_allclose(ds.train.x.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(), 1.0, atol=1e-5)
    # the held-out splits are *not* re-standardised with their own statistics
    assert abs(float(ds.test.x.mean())) > 1e-4


def test_digits_split_is_a_function_of_the_seed():
    a, b, c = load_digits(seed=5), load_digits(seed=5), load_digits(seed=6)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split).x, getattr(b, split).x)
        np.testing.assert_array_equal(getattr(a, split).y, getattr(b, split).y)
    assert not np.array_equal(a.test.y, c.test.y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
    ],
)
def test_digits_rejects_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def test_load_dataset_dispatch_and_errors(tmp_path):
    assert load_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match="'digits' or 'mnist'; got 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("mnist")
    fake_mnist(tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path).name == "mnist"


def test_digits_without_scikit_learn_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed
    with pytest.raises(MissingExtraError) as info:
        load_digits()
    assert str(info.value) == (
        "jsoftmax train needs the training extra (scikit-learn not installed): "
        'pip install "jsoftmax[train]"'
    )
    assert isinstance(info.value, ImportError)
    fake_mnist(tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path).name == "mnist"  # MNIST needs no sklearn


# --------------------------------------------------------------------------------------------
# host batches
# --------------------------------------------------------------------------------------------


def test_host_batches_pad_and_mask_the_last_batch():
    split = Split(x=np.arange(14, dtype=np.float32).reshape(7, 2), y=np.arange(7, dtype=np.int32))
    order = np.array([6, 0, 5, 1, 4, 2, 3])
    batches = list(host_batches(split, order, take=3, size=4))
    assert len(batches) == 3
    for b in batches:
        assert b["x"].shape == (4, 2) and b["x"].dtype == np.float32
        assert b["y"].dtype == np.int32 and b["mask"].dtype == np.bool_
    np.testing.assert_array_equal([b["mask"].sum() for b in batches], [3, 3, 1])
    seen = np.concatenate([b["y"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(seen, order)  # every example once, in the given order
    for b in batches:  # padding rows are zeros
        assert not b["x"][~b["mask"]].any() and not b["y"][~b["mask"]].any()
    np.testing.assert_array_equal(batches[0]["x"][:3], split.x[[6, 0, 5]])


# --------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 9], np.uint8),
        np.array([[-3, 1000], [70000, -1]], np.int32),
        np.array([1.5, -2.25], np.float32),
        np.array([-128, 127], np.int8),
    ],
    ids=["u8-3d", "u8-1d", "i32", "f32", "i8"],
)
def test_read_idx_round_trip(tmp_path, array, gz):
    path = write(tmp_path / ("a.idx" + (".gz" if gz else "")), idx_bytes(array))
    got = read_idx(path)
    assert got.shape == array.shape and got.dtype == array.dtype
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, array)


_GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated: 0 bytes"),
        (b"\x00\x00", "truncated: 2 bytes"),
        (b"\x1f\x8b\x08\x03" + _GOOD[4:], "bad magic number 0x1f8b0803"),
        (b"\x00\x00\x07\x03" + _GOOD[4:], "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (_GOOD[:10], "truncated header: 10 bytes, but 3 dimensions need 16"),
        (
            _GOOD[:-1],
            r"truncated: the header declares shape \(2, 3, 4\) \(24 bytes of data\) "
            r"but the file holds only 23",
        ),
        (_GOOD + b"\x00\x00", "2 unexpected trailing bytes"),
    ],
    ids=["empty", "short", "magic", "type", "0-d", "header", "body", "trailing"],
)
def test_read_idx_corrupt_files_name_the_file(tmp_path, data, match, gz):
    path = write(tmp_path / ("bad-idx3-ubyte" + (".gz" if gz else "")), data)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert path in str(info.value)


def test_read_idx_broken_gzip(tmp_path):
    good = write(tmp_path / "good.gz", _GOOD)
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(Path(good).read_bytes()[:-12])
    with pytest.raises(DataError, match="gzip stream is truncated") as info:
        read_idx(truncated)
    assert str(truncated) in str(info.value)
    not_gzip = tmp_path / "x.gz"
    not_gzip.write_bytes(_GOOD)  # an uncompressed file under a .gz name
    with pytest.raises(DataError, match="not a valid gzip file") as info:
        read_idx(not_gzip)
    assert str(not_gzip) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"IDX file not found: .*nope"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# MNIST from IDX files
# --------------------------------------------------------------------------------------------


def test_load_mnist_plain_and_gzip_files(tmp_path):
    arrays = fake_mnist(tmp_path, n_train=40, n_test=12, rows=4, cols=3)
    ds = load_mnist(tmp_path, val_fraction=0.25, seed=1)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_features) == (30, 10, 12, 12)
    # the official test set is kept whole and in order
    np.testing.assert_array_equal(ds.test.y, arrays["test_labels"])
    # train + val is a permutation of the official training set
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.train.y, ds.val.y])), np.sort(arrays["train_labels"])
    )
    # pixels: /255 then standardised with the train split's mean and std
    flat = arrays["test_images"].reshape(12, -1) / 255.0
    np.testing.assert_allclose(ds.train.x.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(), 1.0, atol=1e-5)
    # an affine map of the raw pixels: correlation 1 with them
    assert np.corrcoef(ds.test.x.ravel(), flat.ravel())[0, 1] == pytest.approx(1.0, abs=1e-6)
    # the same seed gives the same split
    again = load_mnist(tmp_path, val_fraction=0.25, seed=1)
    np.testing.assert_array_equal(again.val.x, ds.val.x)


@pytest.mark.parametrize("role", list(MNIST_FILES))
def test_load_mnist_missing_file_names_it(tmp_path, role):
    fake_mnist(tmp_path, gz=(False, False, False, False))
    (tmp_path / MNIST_FILES[role]).unlink()
    with pytest.raises(FileNotFoundError, match=MNIST_FILES[role]):
        load_mnist(tmp_path)


def test_load_mnist_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST data directory not found: .*absent"):
        load_mnist(tmp_path / "absent")


def test_load_mnist_count_mismatch_names_both_files(tmp_path):
    fake_mnist(tmp_path, gz=(False, False, False, False))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(DataError, match=r"holds 40 images but .*train-labels-idx1-ubyte holds 39"):
        load_mnist(tmp_path)


def test_load_mnist_bad_labels_and_shapes(tmp_path):
    fake_mnist(tmp_path, gz=(False, False, False, False))
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels must lie in \[0, 10\)"):
        load_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(12, np.uint8)))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 12), np.uint8)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: expected images of shape"):
        load_mnist(tmp_path)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 5, 5), np.uint8)))
    with pytest.raises(DataError, match=r"training images are \(4, 3\) pixels but test"):
        load_mnist(tmp_path)


def test_load_mnist_corrupt_file_is_named(tmp_path):
    fake_mnist(tmp_path)  # train labels are gzipped
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte\.gz: the gzip stream is truncated"
    ):
        load_mnist(tmp_path)
