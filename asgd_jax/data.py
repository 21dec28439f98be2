"""In-memory data sets (image classification, byte-level text), and pure helpers to build them.

This module does no file I/O: it turns arrays (or raw bytes handed to it) into a
:class:`Dataset`. Reading files, TFDS and the bundled scikit-learn digits lives in
``experiments/sources.py``.

Conventions: images are float32 NHWC arrays with values in ``[0, 1]``; labels are
int32 arrays of shape ``(N,)`` with values in ``[0, num_classes)``. Text
(:func:`text_dataset`) is windows of byte tokens: ``x`` int32 ``(N, T)``, ``y``
int32 ``(N, T)`` the same window shifted by one byte, ``num_classes = 256``.

Example:

>>> import numpy as np
>>> from asgd_jax import data
>>> ds = data.make_dataset(
...     np.zeros((4, 2, 2), np.uint8), np.array([0, 1, 2, 1]),
...     np.full((2, 2, 2), 255, np.uint8), np.array([2, 0]), name="toy")
>>> ds.num_train, ds.image_shape, ds.num_classes, float(ds.x_test.max())
(4, (2, 2, 1), 3, 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Dataset",
    "decode_idx",
    "images_to_float",
    "make_dataset",
    "digits_to_mnist_frame",
    "byte_windows",
    "text_dataset",
    "BYTE_VOCAB",
]

#: The vocabulary of byte-level text: every byte value is a token.
BYTE_VOCAB = 256


def _size(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test data set held in memory: image classification, or next-token text.

    Attributes:
      x_train: float32 images, shape ``(N_train, H, W, C)``, values in ``[0, 1]``;
        or (text) int32 token windows ``(N_train, T)`` in ``[0, num_classes)``.
      y_train: int32 labels, shape ``(N_train,)``, values in ``[0, num_classes)``;
        or (text) int32 next tokens ``(N_train, T)``: ``y[i, t]`` follows ``x[i, t]``.
      x_test: like ``x_train``, ``N_test`` examples.
      y_test: like ``y_train``.
      num_classes: number of classes.
      name: a short human-readable name (e.g. ``"digits"``, ``"tfds:mnist"``).

    The arrays are NumPy arrays (host memory) unless :meth:`to_device` was
    called. Fields are validated on construction; a bad field raises a one-line
    ``ValueError``. Instances compare by identity (arrays have no single truth
    value).

    Example:

    >>> import numpy as np
    >>> ds = Dataset(np.zeros((3, 8, 8, 1), np.float32), np.array([0, 1, 1], np.int32),
    ...              np.zeros((1, 8, 8, 1), np.float32), np.array([1], np.int32),
    ...              num_classes=2, name="toy")
    >>> ds.num_train, ds.num_test, ds.image_shape
    (3, 1, (8, 8, 1))
    >>> type(ds.to_device().x_train).__name__ in ("ArrayImpl", "Array")
    True
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"Dataset name must be a non-empty string, got {name!r}")
        nc = self.num_classes
        if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or nc < 1:
            raise ValueError(f"Dataset {name!r}: num_classes must be a positive int, got {nc!r}")
        object.__setattr__(self, "num_classes", int(nc))
        for part in ("train", "test"):
            x = getattr(self, f"x_{part}")
            y = getattr(self, f"y_{part}")
            if not hasattr(x, "shape") or not hasattr(y, "shape"):
                raise ValueError(
                    f"Dataset {name!r}: x_{part} and y_{part} must be arrays "
                    f"(got {type(x).__name__} and {type(y).__name__}); wrap them with np.asarray"
                )
            if self.is_text:
                self._check_text(part, x, y)
            else:
                self._check_images(part, x, y)
        if self.num_train == 0:
            raise ValueError(f"Dataset {name!r}: the training set is empty")
        if tuple(self.x_test.shape[1:]) != tuple(self.x_train.shape[1:]):
            what = "windows" if self.is_text else "images"
            raise ValueError(
                f"Dataset {name!r}: train {what} are {tuple(self.x_train.shape[1:])} but test {what} are "
                f"{tuple(self.x_test.shape[1:])}; they must match"
            )

    def _check_images(self, part: str, x: Any, y: Any) -> None:
        name, nc = self.name, self.num_classes
        if x.ndim != 4:
            raise ValueError(
                f"Dataset {name!r}: x_{part} must be 4-D (N, H, W, C), got shape {tuple(x.shape)}; "
                "use images_to_float to add the channel axis"
            )
        if y.ndim != 1:
            raise ValueError(f"Dataset {name!r}: y_{part} must be 1-D (N,), got shape {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Dataset {name!r}: x_{part} has {x.shape[0]} images but y_{part} has {y.shape[0]} labels"
            )
        if x.dtype != np.float32:
            raise ValueError(f"Dataset {name!r}: x_{part} must be float32, got {x.dtype}; use images_to_float")
        _check_labels(name, part, y, nc, "y")
        if _size(x):
            lo, hi = float(x.min()), float(x.max())
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(
                    f"Dataset {name!r}: x_{part} has values in [{lo}, {hi}], outside [0, 1]; "
                    "use images_to_float with the right max_value"
                )

    def _check_text(self, part: str, x: Any, y: Any) -> None:
        name = self.name
        if tuple(y.shape) != tuple(x.shape) or y.dtype != np.int32:
            raise ValueError(
                f"Dataset {name!r}: text y_{part} must be int32 of x_{part}'s shape {tuple(x.shape)}, got "
                f"{y.dtype} {tuple(y.shape)}; use text_dataset"
            )
        _check_labels(name, part, x, self.num_classes, "x")
        _check_labels(name, part, y, self.num_classes, "y")

    @property
    def is_text(self) -> bool:
        """True for token windows (``x_train`` int32 of shape ``(N, T)``), False for images."""
        x = self.x_train
        return getattr(x, "ndim", 0) == 2 and x.dtype == np.int32

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape ``(H, W, C)`` of one image (text: ``(T,)``, the window length)."""
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def to_device(self, device: Any = None) -> "Dataset":
        """Returns a copy whose arrays are ``jax.Array`` s (``jax.device_put``).

        Args:
          device: optional ``jax.Device`` or sharding; default device if ``None``.
        """
        put = lambda a: jax.device_put(a, device)  # noqa: E731
        return dataclasses.replace(
            self,
            x_train=put(self.x_train),
            y_train=put(self.y_train),
            x_test=put(self.x_test),
            y_test=put(self.y_test),
        )


def _check_labels(name: str, part: str, y: Any, nc: int, which: str) -> None:
    if y.dtype != np.int32:
        raise ValueError(
            f"Dataset {name!r}: {which}_{part} must be int32, got {y.dtype}; use make_dataset or "
            f"{which}.astype(np.int32)"
        )
    if _size(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= nc:
            raise ValueError(
                f"Dataset {name!r}: {which}_{part} has {'labels' if which == 'y' else 'tokens'} in [{lo}, {hi}], "
                f"outside [0, {nc}); "
                "fix the labels or num_classes"
            )


# IDX format: http://yann.lecun.com/exdb/mnist/ (bottom of the page).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def decode_idx(buf: bytes, *, what: str = "IDX data") -> np.ndarray:
    """Decodes one IDX file (the MNIST / Fashion-MNIST format) from its bytes.

    Layout: two zero bytes, a dtype code (0x08 ubyte, 0x09 byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then that
    many big-endian uint32 sizes, then the data, big-endian, row-major.

    Args:
      buf: the whole (already decompressed) file.
      what: how to name the data in error messages (e.g. a file name).

    Returns:
      A new, writable array in native byte order with the shape and dtype
      from the header.

    Raises:
      ValueError: (one line) on bad magic, an unknown dtype code, or a payload
        whose size does not match the header.

    Example:

    >>> import struct
    >>> buf = struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">II", 2, 3) + bytes(range(6))
    >>> decode_idx(buf)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    buf = memoryview(buf).cast("B")
    if len(buf) < 4:
        raise ValueError(f"{what}: not an IDX file: only {len(buf)} bytes, the header alone needs at least 4")
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(
            f"{what}: not an IDX file: magic starts with bytes {buf[0]:#04x} {buf[1]:#04x}, expected 0x00 0x00 "
            "(is it still gzip-compressed?)"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in _IDX_DTYPES)
        raise ValueError(f"{what}: unknown IDX dtype code {code:#04x}; known codes are {known}")
    if ndim == 0:
        raise ValueError(f"{what}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{what}: truncated IDX header: expected {header} bytes, got {len(buf)}")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        kind = "truncated" if got < expected else "oversized"
        raise ValueError(
            f"{what}: {kind} IDX payload: shape {shape} of {dtype.newbyteorder('=').name} needs "
            f"{expected} bytes after the header, got {got}"
        )
    flat = np.frombuffer(buf, dtype=dtype, offset=header)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def images_to_float(images: Any, max_value: float = 255) -> np.ndarray:
    """Converts images to float32 NHWC with values in ``[0, 1]``.

    Args:
      images: array of shape ``(N, H, W)`` (a channel axis is added) or
        ``(N, H, W, C)``, any real dtype, values in ``[0, max_value]``.
      max_value: the value that maps to 1.0 (255 for uint8 pixels, 16 for the
        scikit-learn digits, 1 for images already in ``[0, 1]``).

    Returns:
      A float32 NumPy array of shape ``(N, H, W, C)``.

    Raises:
      ValueError: (one line) on a bad shape, a non-positive ``max_value`` or
        values outside ``[0, max_value]``.

    Example:

    >>> import numpy as np
    >>> x = images_to_float(np.array([[[0, 51], [102, 255]]], np.uint8))
    >>> x.shape, x.dtype, x[0, 1, 0, 0].item()
    ((1, 2, 2, 1), dtype('float32'), 0.4000000059604645)
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise ValueError(f"images must be numeric, got dtype {x.dtype}")
    if not np.isfinite(max_value) or max_value <= 0:
        raise ValueError(f"max_value must be a positive number, got {max_value!r}")
    if x.size:
        lo, hi = x.min(), x.max()
        if not (lo >= 0 and hi <= max_value):  # also catches NaN
            raise ValueError(
                f"image values lie in [{lo}, {hi}], outside [0, {max_value}]; pass the right max_value"
            )
    out = x.astype(np.float32)
    out /= np.float32(max_value)
    return np.clip(out, 0.0, 1.0, out=out)


def _labels_to_int32(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D (N,), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"{what} must be integers, got dtype {y.dtype}; convert with .astype(int)")
    if y.size and (y.min() < 0 or y.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{what} has labels in [{y.min()}, {y.max()}]; labels must be in [0, num_classes)")
    return y.astype(np.int32)


def make_dataset(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    name: str,
    num_classes: int | None = None,
    max_value: float = 255,
) -> Dataset:
    """Normalizes raw arrays and builds a :class:`Dataset`.

    Images go through :func:`images_to_float` (``/ max_value``, channel axis
    added for ``(N, H, W)``); labels become int32.

    Args:
      x_train, x_test: images, ``(N, H, W)`` or ``(N, H, W, C)``.
      y_train, y_test: integer labels, ``(N,)``.
      name: the data set's name.
      num_classes: number of classes; default: largest label + 1.
      max_value: pixel value that maps to 1.0.

    Example:

    >>> import numpy as np
    >>> ds = make_dataset(np.zeros((2, 3, 3)), [0, 4], np.ones((1, 3, 3)), [1],
    ...                   name="toy", max_value=1.0)
    >>> ds.num_classes, ds.y_train.dtype
    (5, dtype('int32'))
    """
    ytr = _labels_to_int32(y_train, "y_train")
    yte = _labels_to_int32(y_test, "y_test")
    if num_classes is None:
        num_classes = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    try:
        xtr = images_to_float(x_train, max_value)
        xte = images_to_float(x_test, max_value)
    except ValueError as e:
        raise ValueError(f"Dataset {name!r}: {e}") from None
    return Dataset(xtr, ytr, xte, yte, num_classes=num_classes, name=name)


def digits_to_mnist_frame(images_8x8: Any) -> np.ndarray:
    """Makes scikit-learn's 8×8 digits look like MNIST: ``(N, 28, 28, 1)`` float32.

    Steps: the 0..16 pixel values are divided by 16 (to ``[0, 1]``); each 8×8
    image is resized to 20×20 by bilinear interpolation with
    ``jax.image.resize(..., method="linear")`` (half-pixel centres, edge values
    repeated at the border); then it is zero-padded by 4 pixels on every side to
    28×28 — MNIST centres each digit in a 20×20 box inside a 28×28 frame.
    Values are clipped to ``[0, 1]`` against rounding.

    Args:
      images_8x8: ``(N, 8, 8)`` or flattened ``(N, 64)`` array with values in
        ``[0, 16]`` (``sklearn.datasets.load_digits().images`` / ``.data``).

    Returns:
      A float32 NumPy array of shape ``(N, 28, 28, 1)``; the 4-pixel border is 0.

    Example:

    >>> import numpy as np
    >>> x = digits_to_mnist_frame(np.full((2, 8, 8), 16.0))
    >>> x.shape, float(x[0, 4:24, 4:24].min()), float(x[0, :4].max())
    ((2, 28, 28, 1), 1.0, 0.0)
    """
    x = np.asarray(images_8x8)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 8, 8)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"digits images must have shape (N, 8, 8) or (N, 64), got {x.shape}")
    x = images_to_float(x, max_value=16)[..., 0]  # (N, 8, 8) in [0, 1]
    if x.shape[0] == 0:
        return np.zeros((0, 28, 28, 1), np.float32)
    big = jax.image.resize(jnp.asarray(x), (x.shape[0], 20, 20), method="linear")
    big = jnp.clip(big, 0.0, 1.0)
    framed = jnp.pad(big, ((0, 0), (4, 4), (4, 4)))
    return np.asarray(framed, dtype=np.float32)[..., None]


def _as_byte_stream(data: Any, what: str) -> np.ndarray:
    """``bytes`` / ``bytearray`` / ``memoryview`` / an integer array in ``[0, 256)`` → a 1-D uint8 array."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), np.uint8)
    if isinstance(data, str):
        raise ValueError(f"{what}: pass bytes (e.g. text.encode('utf-8')), not str")
    a = np.asarray(data)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"{what}: expected bytes or a 1-D integer array, got {a.dtype} of shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= BYTE_VOCAB):
        raise ValueError(f"{what}: byte values must lie in [0, 255], got [{a.min()}, {a.max()}]")
    return a.astype(np.uint8)


def byte_windows(stream: Any, context: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Next-byte windows of a byte stream: ``x[i] = s[i·r : i·r + T]``, ``y[i] = s[i·r + 1 : i·r + T + 1]``.

    With ``T`` = ``context`` and ``r`` = ``stride`` (default ``T``: windows of
    ``x`` that do not overlap), every window whose target ends inside the
    stream: :math:`\lfloor (L - T - 1) / r \rfloor + 1` windows of a stream of
    :math:`L \ge T + 1` bytes, none of a shorter one.

    Returns:
      ``(x, y)``, int32 arrays of shape ``(N, T)``.

    >>> x, y = byte_windows(b"abcdefg", 3, stride=2)
    >>> bytes(x[1].astype("u1")), bytes(y[1].astype("u1")), x.shape
    (b'cde', b'def', (2, 3))
    """
    s = _as_byte_stream(stream, "byte_windows")
    t = int(context)
    r = t if stride is None else int(stride)
    if t < 1 or r < 1:
        raise ValueError(f"byte_windows: context and stride must be positive integers, got {context!r}, {stride!r}")
    n = (len(s) - t - 1) // r + 1 if len(s) >= t + 1 else 0
    starts = r * np.arange(n)[:, None] + np.arange(t)[None, :]
    s32 = s.astype(np.int32)
    return s32[starts], s32[starts + 1]


def text_dataset(
    data: Any,
    context: int,
    test_fraction: float | None = 0.1,
    *,
    test: Any = None,
    stride: int | None = None,
    max_test_windows: int | None = None,
    name: str = "text",
) -> Dataset:
    r"""A byte-level language-modelling :class:`Dataset` from a byte stream (no tokenizer: vocabulary 256).

    The stream of :math:`L` bytes is split once, at a fixed place: the last
    :math:`\lfloor f L \rfloor` bytes (``f`` = ``test_fraction``) are the test
    text, the rest the training text (or ``test`` gives the test text, e.g. a
    TFDS test split, and ``test_fraction`` must be ``None``). Each part is cut
    into windows by :func:`byte_windows` (``x`` a window of ``T`` = ``context``
    bytes, ``y`` the same window shifted by one byte; ``stride`` default ``T``).
    ``max_test_windows`` keeps that many test windows, evenly spaced over the
    test text (indices ``round(linspace(0, n − 1, k))``), for a cheaper evaluation.

    Raises:
      ValueError: (one line) an empty stream, a context longer than the
        training or test text allows (each needs ``T + 1`` bytes), a fraction
        outside ``(0, 1)``.

    >>> ds = text_dataset(bytes(range(20)), context=4, test_fraction=0.25)
    >>> ds.num_train, ds.num_test, ds.num_classes, ds.x_train[1].tolist(), ds.y_test[0].tolist()
    (3, 1, 256, [4, 5, 6, 7], [16, 17, 18, 19])
    """
    s = _as_byte_stream(data, f"text {name!r}")
    if len(s) == 0:
        raise ValueError(f"text {name!r} is empty; give a non-empty text")
    if test is None:
        f = 0.1 if test_fraction is None else float(test_fraction)
        if not 0.0 < f < 1.0:
            raise ValueError(f"text {name!r}: test_fraction must lie in (0, 1), got {test_fraction!r}")
        n_test = int(np.floor(f * len(s)))
        train, test_s = s[: len(s) - n_test], s[len(s) - n_test :]
    else:
        if test_fraction is not None:
            raise ValueError(f"text {name!r}: give either a test text or a test_fraction, not both")
        train, test_s = s, _as_byte_stream(test, f"test text {name!r}")
    for part, stream in (("training", train), ("test", test_s)):
        if len(stream) < int(context) + 1:
            fix = "a shorter context or more text" + (" (or a larger test_fraction)" if part == "test" else "")
            raise ValueError(
                f"text {name!r}: context {context} is longer than its {part} text allows ({len(stream)} bytes; "
                f"a window needs context + 1 = {int(context) + 1}); use {fix}"
            )
    x_tr, y_tr = byte_windows(train, context, stride)
    x_te, y_te = byte_windows(test_s, context, stride)
    if max_test_windows is not None and int(max_test_windows) < len(x_te):
        keep = np.round(np.linspace(0, len(x_te) - 1, max(1, int(max_test_windows)))).astype(np.int64)
        x_te, y_te = x_te[keep], y_te[keep]
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=BYTE_VOCAB, name=name)
