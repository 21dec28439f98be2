"""Tests for asgd_jax.data (pure helpers) and experiments.sources (loading)."""

from __future__ import annotations

import gzip
import os
import struct
import time

import chex
import numpy as np
import pytest

from asgd_jax import data
from experiments import sources

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# --- an independent IDX writer ------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(big_endian).tobytes()


def _write_idx_dir(directory, arrays: dict, gz: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    for base, array in arrays.items():
        payload = _idx_bytes(array, 0x08)
        if gz[base]:
            with gzip.open(os.path.join(directory, base + ".gz"), "wb") as f:
                f.write(payload)
        else:
            with open(os.path.join(directory, base), "wb") as f:
                f.write(payload)


@pytest.fixture
def tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 2, 1, 0], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([3, 0, 1], np.uint8),
    }
    # Mixed: two gzipped, two plain.
    gz = {b: i % 2 == 0 for i, b in enumerate(arrays)}
    directory = tmp_path / "tiny-mnist"
    _write_idx_dir(directory, arrays, gz)
    return str(directory), arrays


# --- decode_idx ---------------------------------------------------------------------------------


def test_decode_idx_int16_big_endian():
    a = np.array([[1, -2, 300], [-32768, 32767, 0]], np.int16)
    out = data.decode_idx(_idx_bytes(a, 0x0B))
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    out[0, 0] = 5  # writable


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_decode_idx_all_dtypes(code, dtype):
    a = np.arange(24).reshape(2, 3, 4).astype(dtype)
    out = data.decode_idx(_idx_bytes(a, code))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, a)


def test_decode_idx_bad_magic():
    buf = b"\x01\x00" + _idx_bytes(np.zeros(3, np.uint8), 0x08)[2:]
    with pytest.raises(ValueError, match=r"not an IDX file.*magic"):
        data.decode_idx(buf, what="f.idx")


def test_decode_idx_gzip_hint():
    buf = gzip.compress(_idx_bytes(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(ValueError, match="gzip"):
        data.decode_idx(buf)


def test_decode_idx_unknown_dtype():
    buf = struct.pack(">HBB", 0, 0x0A, 1) + struct.pack(">I", 2) + b"\x00\x00"
    with pytest.raises(ValueError, match=r"unknown IDX dtype code 0x0a"):
        data.decode_idx(buf)


def test_decode_idx_truncated_and_oversized():
    buf = _idx_bytes(np.zeros((2, 3), np.int32), 0x0C)
    with pytest.raises(ValueError, match=r"truncated IDX payload.*needs 24 bytes after the header, got 20"):
        data.decode_idx(buf[:-4], what="x")
    with pytest.raises(ValueError, match=r"oversized IDX payload.*got 25"):
        data.decode_idx(buf + b"\x00")
    with pytest.raises(ValueError, match=r"truncated IDX header"):
        data.decode_idx(buf[:9])


def test_error_messages_are_one_line():
    with pytest.raises(ValueError) as info:
        data.decode_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    assert "\n" not in str(info.value)


# --- Dataset / helpers --------------------------------------------------------------------------


def test_images_to_float_and_make_dataset():
    x = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = data.images_to_float(x, 255)
    chex.assert_shape(out, (1, 2, 2, 1))
    chex.assert_type(out, np.float32)
    np.testing.assert_allclose(out[0, :, :, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    with pytest.raises(ValueError, match="max_value"):
        data.images_to_float(x, 100)
    ds = data.make_dataset(x, [1], x, [0], name="t")
    assert ds.num_classes == 2 and ds.num_train == 1 and ds.image_shape == (2, 2, 1)
    chex.assert_type(ds.y_train, np.int32)


def test_dataset_validation():
    x = np.zeros((2, 3, 3, 1), np.float32)
    y = np.array([0, 1], np.int32)
    with pytest.raises(ValueError, match="2 images but y_train has 1 labels"):
        data.Dataset(x, y[:1], x, y, num_classes=2, name="t")
    with pytest.raises(ValueError, match="4-D"):
        data.Dataset(x[..., 0], y, x, y, num_classes=2, name="t")
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        data.Dataset(x, y + 1, x, y, num_classes=2, name="t")
    with pytest.raises(ValueError, match="float32"):
        data.Dataset(x.astype(np.float64), y, x, y, num_classes=2, name="t")


def test_to_device():
    x = np.random.default_rng(0).random((2, 3, 3, 1), dtype=np.float32)
    ds = data.Dataset(x, np.array([0, 1], np.int32), x, np.array([1, 1], np.int32), num_classes=2, name="t")
    dev = ds.to_device()
    import jax

    assert isinstance(dev.x_train, jax.Array) and isinstance(dev.y_test, jax.Array)
    np.testing.assert_array_equal(np.asarray(dev.x_train), x)
    assert dev.name == "t" and dev.num_classes == 2 and isinstance(ds.x_train, np.ndarray)


def test_digits_to_mnist_frame_matches_reference():
    # Independent reference: bilinear (half-pixel centres, clamped edges), 8 -> 20, written by hand.
    rng = np.random.default_rng(1)
    img = rng.integers(0, 17, size=(8, 8)).astype(np.float64)
    src = (np.arange(20) + 0.5) * 8 / 20 - 0.5
    i0 = np.clip(np.floor(src).astype(int), 0, 7)
    i1 = np.clip(i0 + 1, 0, 7)
    t = np.clip(src - np.floor(src), 0, 1)
    t = np.where(src < 0, 0.0, t)
    rows = img[i0] * (1 - t)[:, None] + img[i1] * t[:, None]
    ref = rows[:, i0] * (1 - t)[None, :] + rows[:, i1] * t[None, :]
    out = data.digits_to_mnist_frame(img[None])
    chex.assert_shape(out, (1, 28, 28, 1))
    np.testing.assert_allclose(out[0, 4:24, 4:24, 0], ref / 16, atol=1e-5)
    assert not out[0, :4].any() and not out[0, 24:].any() and not out[0, :, :4].any() and not out[0, :, 24:].any()


# --- parse_source -------------------------------------------------------------------------------


def test_parse_source_forms(tiny_idx):
    directory, _ = tiny_idx
    assert sources.parse_source("digits") == ("digits", "")
    assert sources.parse_source("tfds:mnist") == ("tfds", "mnist")
    assert sources.parse_source("idx:" + directory) == ("idx", directory)


def test_parse_source_missing_dir(tmp_path):
    with pytest.raises(sources.DataSourceError, match=r"does not exist.*four standard MNIST"):
        sources.parse_source(f"idx:{tmp_path}/nope")


def test_parse_source_missing_file(tiny_idx):
    directory, _ = tiny_idx
    os.remove(os.path.join(directory, "t10k-labels-idx1-ubyte"))
    with pytest.raises(sources.DataSourceError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\].*apt-get") as info:
        sources.parse_source("idx:" + directory)
    assert "\n" not in str(info.value)


def test_parse_source_unknown_and_empty():
    with pytest.raises(sources.DataSourceError, match=r"unknown data source 'mnist'.*digits.*tfds:<name>.*idx:<dir>"):
        sources.parse_source("mnist")
    with pytest.raises(sources.DataSourceError, match="empty TFDS name"):
        sources.parse_source("tfds:")
    assert issubclass(sources.DataSourceError, ValueError)


# --- load_source: idx ---------------------------------------------------------------------------


def test_load_idx_matches_written_arrays(tiny_idx):
    directory, arrays = tiny_idx
    ds = sources.load_source("idx:" + directory)
    assert ds.name == "idx:tiny-mnist" and ds.num_classes == 4
    chex.assert_shape([ds.x_train, ds.x_test], [(7, 5, 4, 1), (3, 5, 4, 1)])
    chex.assert_type([ds.x_train, ds.y_train], [np.float32, np.int32])
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"].astype(np.int32))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"].astype(np.int32))


def test_load_idx_gzip_without_suffix_and_all_plain(tmp_path):
    arrays = {
        "train-images-idx3-ubyte": np.full((2, 3, 3), 255, np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1], np.uint8),
        "t10k-images-idx3-ubyte": np.zeros((1, 3, 3), np.uint8),
        "t10k-labels-idx1-ubyte": np.array([1], np.uint8),
    }
    _write_idx_dir(tmp_path, arrays, {b: False for b in arrays})
    # gzip content under a plain name is detected by its magic bytes.
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    ds = sources.load_source(f"idx:{tmp_path}")
    np.testing.assert_array_equal(ds.y_train, [0, 1])
    assert ds.x_train.min() == 1.0 and ds.x_test.max() == 0.0


def test_load_idx_mismatched_counts(tmp_path):
    arrays = {
        "train-images-idx3-ubyte": np.zeros((3, 2, 2), np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1], np.uint8),
        "t10k-images-idx3-ubyte": np.zeros((1, 2, 2), np.uint8),
        "t10k-labels-idx1-ubyte": np.array([1], np.uint8),
    }
    _write_idx_dir(tmp_path, arrays, {b: True for b in arrays})
    with pytest.raises(sources.DataSourceError, match=r"train-labels-idx1-ubyte.gz: 2 labels but .* 3 images"):
        sources.load_source(f"idx:{tmp_path}")
    # Labels file where an images file belongs.
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(1, np.uint8), 0x08)))
    with pytest.raises(sources.DataSourceError, match=r"t10k-images-idx3-ubyte.gz: not an IDX images file: magic number 0x00000801"):
        sources.load_source(f"idx:{tmp_path}")


# --- load_source: digits ------------------------------------------------------------------------


def test_digits():
    ds = sources.load_source("digits")
    assert ds.name == "digits" and ds.num_classes == 10
    chex.assert_shape([ds.x_train, ds.x_test], [(1437, 28, 28, 1), (360, 28, 28, 1)])
    chex.assert_type([ds.x_train, ds.y_train], [np.float32, np.int32])
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    for x in (ds.x_train, ds.x_test):
        assert not x[:, :4].any() and not x[:, -4:].any() and not x[:, :, :4].any() and not x[:, :, -4:].any()
    # Stratified: every class has 35-37 of the 360 test images (1797 * 360/1797 ~ 36 per class).
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37, counts
    again = sources.load_source("digits")
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)


# --- load_source: tfds --------------------------------------------------------------------------


def test_tfds_mock_mnist(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = sources.load_source("tfds:mnist", data_dir=str(tmp_path))
    assert ds.name == "tfds:mnist" and ds.num_classes == 10
    chex.assert_shape([ds.x_train, ds.x_test], [(12, 28, 28, 1), (12, 28, 28, 1)])
    chex.assert_type([ds.x_train, ds.y_train, ds.y_test], [np.float32, np.int32, np.int32])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def _prepare_tiny_tfds(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Prepares a real (not mocked) array_record TFDS data set; needs no TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(3)
    x = {"train": rng.integers(0, 256, (9, 6, 5, 1), dtype=np.uint8),
         "test": rng.integers(0, 256, (4, 6, 5, 1), dtype=np.uint8)}
    y = {"train": np.arange(9) % 3, "test": np.array([2, 1, 0, 1])}

    class AsgdTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            # A Tensor feature, not Image: encoding PNGs would need TensorFlow.
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(6, 5, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=7)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in x}

        def _generate_examples(self, split):
            for i in range(len(y[split])):
                yield i, {"image": x[split][i], "label": int(y[split][i])}

    AsgdTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return x, y


def test_tfds_real_array_record(tmp_path):
    x, y = _prepare_tiny_tfds(tmp_path)
    ds = sources.load_source("tfds:asgd_tiny_images", data_dir=str(tmp_path))
    assert ds.name == "tfds:asgd_tiny_images" and ds.num_classes == 7  # from the data set's info
    chex.assert_shape([ds.x_train, ds.x_test], [(9, 6, 5, 1), (4, 6, 5, 1)])
    # array_record keeps the records but not necessarily their order: compare (label, image) pairs.
    for split, xs, ys in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        got = sorted((int(l), (im * 255).round().astype(np.uint8).tobytes()) for im, l in zip(xs, ys))
        want = sorted((int(l), im.tobytes()) for im, l in zip(x[split], y[split]))
        assert got == want


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.monotonic()
    with pytest.raises(sources.DataSourceError, match=r"tfds:mnist is not prepared in .*download_and_prepare.*idx:") as info:
        sources.load_source("tfds:mnist", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 10


def test_tfds_unknown_name(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(sources.DataSourceError, match="no such TFDS data set") as info:
        sources.load_source("tfds:surely_not_a_dataset_xyz", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


# --- the real Fashion-MNIST (Debian's dataset-fashion-mnist) ------------------------------------


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    ds = sources.load_source("idx:" + FASHION_DIR)
    assert ds.name == "idx:fashion-mnist" and ds.num_classes == 10
    assert (ds.num_train, ds.num_test, ds.image_shape) == (60000, 10000, (28, 28, 1))
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() == 1.0


def test_random_source_for_timing():
    ds = sources.load_source("random:300")
    assert (ds.num_train, ds.num_test, ds.image_shape, ds.num_classes) == (300, 10_000, (28, 28, 1), 10)
    assert ds.name == "random:300" and 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    # Fixed seed: the same images every time; the test images are not the training images.
    np.testing.assert_array_equal(ds.x_train, sources.load_source("random:300").x_train)
    assert not np.array_equal(ds.x_train[:10], ds.x_test[:10])
    for bad in ("random:", "random:abc", "random:0", "random:-3", "random:1.5"):
        with pytest.raises(sources.DataSourceError, match="random:<n>"):
            sources.parse_source(bad)
