"""The input pipeline: scikit-learn's bundled digits, MNIST from IDX files, and host batches.

Both loaders return a :class:`Dataset` of NumPy arrays (``float32`` images flattened to
``[n, features]``, ``int32`` labels ``[n]``) split into train, validation and test sets. The
splits are a pure function of the seed, so the same seed always gives the same examples in the
same order on every machine and every process (which is what lets each host of a multi-host run
load the data independently).

Pixels are scaled to ``[0, 1]`` and then standardised with one scalar mean and standard deviation
computed on the *training* split only, so no statistic leaks from validation or test data.

Any problem with a data file is a :class:`DataError` (a ``ValueError``) or a
``FileNotFoundError`` whose message names the file.

:func:`host_batches` cuts a split into fixed-size, zero-padded NumPy batches with a mask that
marks the real examples, so every batch has the same shape and nothing recompiles.

The digits need scikit-learn (the ``train`` extra), imported only by :func:`load_digits`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from jsoftmax.train.extras import require

__all__ = [
    "DIGITS_SIZE",
    "MNIST_FILES",
    "DataError",
    "Dataset",
    "Split",
    "host_batches",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "split_sizes",
]

NUM_CLASSES = 10

# Images in scikit-learn's bundled digits: a fixed size, so Config can check the split sizes of
# its fractions up front, without scikit-learn (MNIST's size comes from its files).
DIGITS_SIZE = 1797

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# role -> standard file name (each may also be gzipped, with a ".gz" suffix)
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(ValueError):
    """A data file is missing pieces, corrupt, or inconsistent with its partner file."""


@dataclass(frozen=True)
class Split:
    """One split: float32 images ``x`` ``[n, features]`` and int32 labels ``y`` ``[n]``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits of one dataset."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int = NUM_CLASSES

    @property
    def num_features(self) -> int:
        return int(self.train.x.shape[1])


# --------------------------------------------------------------------------------------------
# splitting and normalisation
# --------------------------------------------------------------------------------------------


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """The train, validation and test sizes that :func:`load_digits` cuts from ``n`` images.

    Examples:
      >>> split_sizes(DIGITS_SIZE, 0.1, 0.2)
      {'train': 1258, 'validation': 180, 'test': 359}
    """
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    return {"train": n - n_val - n_test, "validation": n_val, "test": n_test}


def _standardise(splits: dict[str, tuple[np.ndarray, np.ndarray]], scale: float) -> dict:
    """Scale pixels by ``1/scale`` and standardise with the train split's scalar mean and std."""
    x_train = splits["train"][0].astype(np.float64) / scale
    mean = float(x_train.mean())
    std = float(x_train.std())
    std = std if std > 0.0 else 1.0  # a constant training set: centre it, don't divide by 0
    out = {}
    for key, (x, y) in splits.items():
        z = (x.astype(np.float64) / scale - mean) / std
        out[key] = Split(
            x=np.ascontiguousarray(z.reshape(len(z), -1), dtype=np.float32),
            y=np.ascontiguousarray(y, dtype=np.int32),
        )
    return out


def load_digits(*, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, no network), split by ``seed``.

    Args:
      val_fraction: share of all images held out for validation.
      test_fraction: share of all images held out for testing.
      seed: seed of the permutation that assigns images to splits.

    Returns:
      A :class:`Dataset` with 64 features per image. With the defaults the splits hold 1,258,
      180 and 359 images.

    Raises:
      MissingExtraError: scikit-learn is not installed (``pip install "jsoftmax[train]"``).

    Examples:
      >>> from jsoftmax.train.data import load_digits
      >>> ds = load_digits(seed=0)
      >>> len(ds.train), len(ds.val), len(ds.test), ds.num_features
      (1258, 180, 359, 64)
    """
    require("sklearn")
    from sklearn.datasets import load_digits as _sk_load_digits

    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data; got "
            f"{val_fraction} + {test_fraction}"
        )
    x, y = _sk_load_digits(return_X_y=True)
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    sizes = split_sizes(n, val_fraction, test_fraction)
    n_test, n_val = sizes["test"], sizes["validation"]
    test_idx, val_idx, train_idx = np.split(perm, [n_test, n_test + n_val])
    splits = {
        "train": (x[train_idx], y[train_idx]),
        "val": (x[val_idx], y[val_idx]),
        "test": (x[test_idx], y[test_idx]),
    }
    return Dataset(name="digits", **_standardise(splits, scale=16.0))


# --------------------------------------------------------------------------------------------
# IDX files (MNIST)
# --------------------------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError as e:
        raise DataError(f"{path}: the gzip stream is truncated ({e})") from None
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: not a valid gzip file ({e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzipped (``.gz``), into a NumPy array.

    The format: a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
    ``uint32`` dimensions, then the values in row-major order.

    Args:
      path: the file. A name ending in ``.gz`` is decompressed.

    Returns:
      An array of the declared shape, in native byte order.

    Raises:
      FileNotFoundError: the file does not exist.
      DataError: a bad magic number, an unknown type code, a truncated header or body, or
        trailing bytes; the message names the file and what was expected.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(
            f"{path}: truncated: {len(raw)} bytes, fewer than the 4-byte IDX magic number"
        )
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x}; an IDX file starts with two zero bytes "
            f"(e.g. 0x00000803 for images, 0x00000801 for labels). Is it an IDX file?"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions (magic 0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated header: {len(raw)} bytes, but {ndim} dimensions need {header}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise DataError(
            f"{path}: truncated: the header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds only {got}"
        )
    if got > expected:
        raise DataError(
            f"{path}: {got - expected} unexpected trailing bytes after the {expected} bytes "
            f"of data declared by the header (shape {shape})"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"MNIST file not found: neither {os.path.join(data_dir, name)} nor "
        f"{os.path.join(data_dir, name)}.gz exists. Put the four standard IDX files "
        f"({', '.join(MNIST_FILES.values())}, gzipped or not) in --data-dir."
    )


def _read_pair(data_dir: str, images_name: str, labels_name: str, num_classes: int):
    images_path, labels_path = _find(data_dir, images_name), _find(data_dir, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: expected images of shape [count, rows, cols]; got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels of shape [count]; got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; the counts must match"
        )
    if len(labels) == 0:
        raise DataError(f"{labels_path}: holds no examples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{labels_path}: labels must lie in [0, {num_classes}); found values from "
            f"{labels.min()} to {labels.max()}"
        )
    return images, labels


def load_mnist(data_dir: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """MNIST from the four standard IDX files in ``data_dir`` (each plain or ``.gz``).

    The official test set is the test split; ``val_fraction`` of the official training set,
    chosen by ``seed``, is held out for validation.

    Args:
      data_dir: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (optionally ``.gz``).
      val_fraction: share of the training images held out for validation.
      seed: seed of the permutation that picks the validation images.

    Returns:
      A :class:`Dataset` with ``rows * cols`` features per image (784 for MNIST).

    Raises:
      FileNotFoundError: ``data_dir`` or one of the files is missing (the message names it).
      DataError: a file is corrupt, truncated, or disagrees with its partner.
    """
    data_dir = os.fspath(data_dir)
    _check_fraction(val_fraction, "val_fraction")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"MNIST data directory not found: {data_dir}")
    x_train, y_train = _read_pair(
        data_dir, MNIST_FILES["train_images"], MNIST_FILES["train_labels"], NUM_CLASSES
    )
    x_test, y_test = _read_pair(
        data_dir, MNIST_FILES["test_images"], MNIST_FILES["test_labels"], NUM_CLASSES
    )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"training images are {x_train.shape[1:]} pixels but test images are "
            f"{x_test.shape[1:]} (in {data_dir})"
        )
    n = len(y_train)
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise DataError(f"val_fraction={val_fraction} of {n} training images leaves an empty split")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    splits = {
        "train": (x_train[train_idx], y_train[train_idx]),
        "val": (x_train[val_idx], y_train[val_idx]),
        "test": (x_test, y_test),
    }
    return Dataset(name="mnist", **_standardise(splits, scale=255.0))


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load ``"digits"`` (bundled, offline) or ``"mnist"`` (IDX files in ``data_dir``).

    ``test_fraction`` applies to the digits only: MNIST has an official test set.
    """
    if name == "digits":
        return load_digits(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if name == "mnist":
        if not data_dir:
            raise ValueError("data='mnist' needs data_dir: the folder holding the IDX files")
        return load_mnist(data_dir, val_fraction=val_fraction, seed=seed)
    raise ValueError(f"data must be 'digits' or 'mnist'; got {name!r}")


# --------------------------------------------------------------------------------------------
# host batches
# --------------------------------------------------------------------------------------------


def host_batches(
    split: Split, order: np.ndarray, take: int, size: int
) -> Iterator[dict[str, np.ndarray]]:
    """NumPy batches of ``take`` examples of ``split`` in ``order``, zero-padded to ``size`` rows.

    Each batch is ``{"x": [size, features] float32, "y": [size] int32, "mask": [size] bool}``,
    ``mask`` true on the real examples. ``size >= take``; the last batch may hold fewer real
    examples than ``take``.
    """
    for start in range(0, len(order), take):
        idx = order[start : start + take]
        n = len(idx)
        x = np.zeros((size, split.x.shape[1]), np.float32)
        y = np.zeros((size,), np.int32)
        mask = np.zeros((size,), np.bool_)
        x[:n], y[:n], mask[:n] = split.x[idx], split.y[idx], True
        yield {"x": x, "y": y, "mask": mask}
