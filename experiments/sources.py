"""Where the experiments' data comes from: source specs, validated then loaded.

A *source spec* is a short string (the CLI's ``--data``):

* ``digits`` — scikit-learn's bundled 8×8 digits (no download), framed like MNIST.
* ``tfds:<name>`` — a TFDS data set already prepared on disk, read with
  ``tfds.data_source`` (no TensorFlow needed to read).
* ``idx:<dir>`` — a directory with the four standard MNIST / Fashion-MNIST IDX files.
* ``random:<n>`` — ``n`` random MNIST-shaped training images with random labels
  (and 10 000 test images): for timing a study at full size with no files
  (accuracy stays at chance).
* ``text:<path>`` — a UTF-8 text file, or a folder of them, as byte-level
  language-modelling windows (:func:`load_text_source`; vocabulary 256, no
  tokenizer). ``tfds:tiny_shakespeare`` (any TFDS data set with a ``text``
  feature) gives text windows the same way.

:func:`parse_source` checks a spec cheaply, without loading anything;
:func:`load_source` loads it into an :class:`asgd_jax.data.Dataset` (float32 NHWC
images in ``[0, 1]``, int32 labels). Nothing is cached on disk. Every failure is
a :class:`DataSourceError` with a one-line message that says how to fix it.

Feature-vector data for logistic regression (the ``asgrad`` study) has its own
source, ``libsvm:<path>``: a LIBSVM / svmlight text file (``<label>
<index>:<value> ...`` per line, optionally ``.gz`` or ``.bz2``), checked by
:func:`parse_libsvm` and read by :func:`load_libsvm` into a dense float32 matrix
and labels in ``{-1, +1}``.

Example:

>>> from experiments import sources
>>> sources.parse_source("tfds:mnist")
('tfds', 'mnist')
>>> ds = sources.load_source("digits")
>>> ds.num_train, ds.num_test, ds.image_shape
(1437, 360, (28, 28, 1))
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from asgd_jax import data as data_lib

__all__ = [
    "IDX_FILES",
    "LIBSVM_HELP",
    "SOURCES_HELP",
    "DataSourceError",
    "TEXT_SKIP_SUFFIXES",
    "load_libsvm",
    "load_source",
    "load_text_source",
    "read_text_bytes",
    "parse_libsvm",
    "parse_source",
]

SOURCES_HELP = (
    "data source: 'digits' = scikit-learn's bundled 8x8 digits, resized to 20x20 and framed in 28x28 "
    "like MNIST (1437 train / 360 test, stratified, fixed seed; no download); "
    "'tfds:<name>' = a TFDS data set already prepared on disk (e.g. tfds:mnist, tfds:fashion_mnist; "
    "splits 'train' and 'test', features 'image' and 'label'; see --data-dir); "
    "'idx:<dir>' = a directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz "
    "(e.g. idx:/usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist package); "
    "'random:<n>' = n random 28x28 images with random labels (+ 10000 test), for timing only, e.g. random:60000; "
    "'text:<path>' = a UTF-8 text file or a folder of them as byte-level text windows (the transformer study; "
    "e.g. text:/usr/share/games/fortunes from Debian's fortunes package)"
)

#: The four files an ``idx:<dir>`` source needs, keyed by role; each may end in ``.gz``.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_VALID_FORMS = (
    "'digits', 'tfds:<name>' (e.g. tfds:mnist), 'idx:<dir>' (e.g. idx:/usr/share/datasets/fashion-mnist), "
    "'random:<n>' (timing only) or 'text:<path>' (text)"
)
#: File names a ``text:<folder>`` source leaves out: fortune's index files (``.dat``) and its
#: ``.u8`` links; symbolic links and anything that is not a regular file are left out too.
TEXT_SKIP_SUFFIXES = (".dat", ".u8")
_TEXT_HINT = "give a UTF-8 text file or a folder of them (e.g. apt-get install fortunes, then text:/usr/share/games/fortunes)"
_IDX_HINT = (
    "expected the four standard MNIST/Fashion-MNIST IDX files (on Debian: apt-get install "
    "dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
)
_DIGITS_TEST_SIZE = 360
_RANDOM_MAX = 10_000_000
_RANDOM_TEST_SIZE = 10_000
_DIGITS_SEED = 0


class DataSourceError(ValueError):
    """A data source spec is invalid or its data cannot be loaded.

    The message is always a single line (newlines are folded into ``"; "``) and
    says what to do about it.
    """

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _find_idx_file(directory: str, base: str) -> str | None:
    for candidate in (base, base + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def parse_source(spec: str) -> tuple[str, str]:
    """Validates a source spec without loading any data.

    Args:
      spec: ``"digits"``, ``"tfds:<name>"`` or ``"idx:<dir>"``.

    Returns:
      ``(kind, argument)``: ``("digits", "")``, ``("tfds", name)`` or
      ``("idx", directory)`` (``~`` expanded).

    Raises:
      DataSourceError: the spec is malformed, or for ``idx:`` the directory or
        one of its four files is missing.

    Example:

    >>> parse_source("digits")
    ('digits', '')
    >>> parse_source("tfds:fashion_mnist")
    ('tfds', 'fashion_mnist')
    >>> try:
    ...     parse_source("csv:/tmp/x")
    ... except DataSourceError as e:
    ...     print(e)
    unknown data source 'csv:/tmp/x'; use 'digits', 'tfds:<name>' (e.g. tfds:mnist), 'idx:<dir>' (e.g. idx:/usr/share/datasets/fashion-mnist), 'random:<n>' (timing only) or 'text:<path>' (text)
    """
    if not isinstance(spec, str):
        raise DataSourceError(f"data source must be a string, got {type(spec).__name__}; use {_VALID_FORMS}")
    if spec == "digits":
        return ("digits", "")
    scheme, sep, arg = spec.partition(":")
    if sep and scheme == "tfds":
        if not arg.strip():
            raise DataSourceError(f"'{spec}': empty TFDS name; write e.g. tfds:mnist or tfds:fashion_mnist")
        if arg != arg.strip():
            raise DataSourceError(f"'{spec}': TFDS name has surrounding spaces; write e.g. tfds:mnist")
        return ("tfds", arg)
    if sep and scheme == "libsvm":
        raise DataSourceError(
            f"'{spec}' is a LIBSVM feature-vector file (logistic regression), which only the asgrad study reads; "
            f"image studies take {_VALID_FORMS}"
        )
    if sep and scheme == "random":
        if not arg.isdigit() or not 1 <= int(arg) <= _RANDOM_MAX:
            raise DataSourceError(
                f"'{spec}': write random:<n> with n a whole number of training images in 1..{_RANDOM_MAX}, "
                "e.g. random:60000"
            )
        return ("random", arg)
    if sep and scheme == "text":
        if not arg:
            raise DataSourceError(f"'{spec}': empty path; write text:<file or folder>; {_TEXT_HINT}")
        path = os.path.expanduser(arg)
        if not os.path.exists(path):
            raise DataSourceError(f"{spec}: {path} does not exist; {_TEXT_HINT}")
        return ("text", path)
    if sep and scheme == "idx":
        if not arg:
            raise DataSourceError(f"'{spec}': empty directory; write idx:<dir>, {_IDX_HINT}")
        directory = os.path.expanduser(arg)
        if not os.path.exists(directory):
            raise DataSourceError(f"{spec}: directory {directory} does not exist; {_IDX_HINT}")
        if not os.path.isdir(directory):
            raise DataSourceError(f"{spec}: {directory} is not a directory; {_IDX_HINT}")
        for base in IDX_FILES.values():
            if _find_idx_file(directory, base) is None:
                raise DataSourceError(f"{spec}: missing {base}[.gz]; {_IDX_HINT}")
        return ("idx", directory)
    raise DataSourceError(f"unknown data source '{spec}'; use {_VALID_FORMS}")


def load_source(spec: str, *, data_dir: str | None = None, download: bool = False) -> data_lib.Dataset:
    """Loads a data source into host memory as a :class:`asgd_jax.data.Dataset`.

    * ``digits``: ``sklearn.datasets.load_digits()``, split with
      ``train_test_split(test_size=360, random_state=0, stratify=y)`` into 1437
      train / 360 test images, framed by :func:`asgd_jax.data.digits_to_mnist_frame`
      to ``(28, 28, 1)``. Name ``"digits"``.
    * ``idx:<dir>``: the four IDX files (gzip or plain), pixels / 255;
      ``num_classes`` = largest label + 1. Name ``"idx:<basename of dir>"``.
    * ``tfds:<name>``: ``tfds.data_source(name, split=..., data_dir=data_dir,
      download=download)`` for ``"train"`` and ``"test"``, features ``image``
      and ``label``; ``num_classes`` from the data set's info. Name
      ``"tfds:<name>"``. A data set with a ``text`` feature (``tiny_shakespeare``)
      gives text windows, as :func:`load_text_source` with its defaults.
    * ``text:<path>``: :func:`load_text_source` with its defaults (windows of 128 bytes).

    Args:
      spec: a source spec, see :data:`SOURCES_HELP`.
      data_dir: TFDS data directory (``tfds:`` only; default: TFDS's own,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: ``tfds:`` only: let TFDS download and prepare a missing data
        set (needs internet and TensorFlow). Off by default.

    Raises:
      DataSourceError: (one line) bad spec, missing or corrupt files, a TFDS
        data set that is not prepared, ...

    Example:

    >>> ds = load_source("digits")
    >>> ds.name, ds.num_classes, ds.x_train.dtype, float(ds.x_train.max()) <= 1.0
    ('digits', 10, dtype('float32'), True)
    """
    kind, arg = parse_source(spec)
    if kind == "digits":
        return _load_digits()
    if kind == "idx":
        return _load_idx(spec, arg)
    if kind == "random":
        return _load_random(int(arg))
    if kind == "text":
        return load_text_source(spec)
    return _load_tfds(arg, data_dir=data_dir, download=download)


def _load_random(n: int) -> data_lib.Dataset:
    """``n`` + 10 000 uniform random 28×28 uint8 images (fixed seed 0), labels uniform in 0..9."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n + _RANDOM_TEST_SIZE, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n + _RANDOM_TEST_SIZE)
    return data_lib.make_dataset(x[:n], y[:n], x[n:], y[n:], name=f"random:{n}")


# --- digits -------------------------------------------------------------------------------------


def _load_digits() -> data_lib.Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images,
        digits.target,
        test_size=_DIGITS_TEST_SIZE,
        random_state=_DIGITS_SEED,
        stratify=digits.target,
    )
    return data_lib.make_dataset(
        data_lib.digits_to_mnist_frame(x_tr),
        y_tr,
        data_lib.digits_to_mnist_frame(x_te),
        y_te,
        name="digits",
        num_classes=10,
        max_value=1.0,
    )


# --- IDX ----------------------------------------------------------------------------------------


def _read_idx(path: str, want_ndim: int | None = None) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataSourceError(
            f"{path}: cannot read ({_first_line(e)}); check the file's permissions"
        ) from None
    if path.endswith(".gz") or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataSourceError(
                f"{path}: corrupt gzip data ({_first_line(e)}); download the file again"
            ) from None
    if want_ndim is not None and len(raw) >= 4:
        magic = int.from_bytes(raw[:4], "big")
        if raw[0] != 0 or raw[1] != 0 or raw[3] != want_ndim:
            kind = "images" if want_ndim == 3 else "labels"
            raise DataSourceError(
                f"{path}: not an IDX {kind} file: magic number {magic:#010x}, expected 0x000008{want_ndim:02x} "
                f"(two zero bytes, a type code, {want_ndim} dimension(s)); is this the right file?"
            )
    try:
        return data_lib.decode_idx(raw, what=path)
    except ValueError as e:
        raise DataSourceError(f"{e}; download the file again") from None


def _load_idx(spec: str, directory: str) -> data_lib.Dataset:
    paths = {role: _find_idx_file(directory, base) for role, base in IDX_FILES.items()}
    arrays = {}
    for role, path in paths.items():
        assert path is not None  # parse_source checked
        want = 3 if role.endswith("images") else 1
        a = _read_idx(path, want)
        if a.ndim != want:
            layout = "(N, rows, cols)" if want == 3 else "(N,)"
            raise DataSourceError(
                f"{path}: expected a {want}-D array {layout}, got shape {a.shape}; is this the right file?"
            )
        if a.shape[0] == 0:
            raise DataSourceError(f"{path}: holds 0 {role.split('_')[1]}; a study needs at least one, "
                                  "download the file again")
        if want == 3 and 0 in a.shape[1:]:
            raise DataSourceError(f"{path}: images of {a.shape[1]} x {a.shape[2]} pixels; is this the right file?")
        if role.endswith("labels") and not np.issubdtype(a.dtype, np.integer):
            raise DataSourceError(f"{path}: labels must be integers, got {a.dtype}; is this the right file?")
        arrays[role] = a
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise DataSourceError(
                f"{paths[f'{part}_labels']}: {n_lab} labels but {paths[f'{part}_images']} has {n_img} images; "
                "the files do not belong together"
            )
    images = (arrays["train_images"], arrays["test_images"])
    max_value = 255 if all(np.issubdtype(a.dtype, np.integer) for a in images) else 1.0
    name = "idx:" + (os.path.basename(os.path.normpath(os.path.abspath(directory))) or directory)
    try:
        return data_lib.make_dataset(
            arrays["train_images"],
            arrays["train_labels"],
            arrays["test_images"],
            arrays["test_labels"],
            name=name,
            max_value=max_value,
        )
    except ValueError as e:
        raise DataSourceError(f"{spec}: {e}") from None


# --- TFDS ---------------------------------------------------------------------------------------

_TFDS_SPLITS = ("train", "test")
_TFDS_CHUNK = 4096


def _tfds_prepare_hint(name: str, data_dir: str | None) -> str:
    dd = f", data_dir={data_dir!r}" if data_dir else ""
    return (
        f'prepare it on a machine with internet and TensorFlow: python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}'{dd}, file_format='array_record').download_and_prepare()\" "
        "(then copy the data directory here), or pass --data idx:<dir> with IDX files"
    )


def _tfds_error(tfds, name: str, data_dir: str | None, split: str, exc: Exception) -> DataSourceError:
    """Turns whatever tfds raised into one actionable line.

    tfds 4.9.10 does not say "not prepared" clearly: for a missing data set,
    ``tfds.data_source(..., download=False)`` raises ``KeyError`` ("splits is
    empty") with the default data dir, ``NotImplementedError`` (no random access
    for TFRECORD) with an explicit ``data_dir``; other versions raise
    ``AssertionError`` or ``FileNotFoundError``. So ask the builder directly.
    """
    where = (
        data_dir or getattr(getattr(tfds.core, "constants", None), "DATA_DIR", None) or "the TFDS data dir"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception:  # noqa: BLE001 - diagnosis only; fall back to the original error
        builder, prepared = None, None
    if prepared is False:
        return DataSourceError(
            f"tfds:{name} is not prepared in {where}; {_tfds_prepare_hint(name, data_dir)}"
        )
    if prepared and builder is not None:
        splits = list(builder.info.splits.keys())
        if split not in splits:
            return DataSourceError(
                f"tfds:{name} has no '{split}' split (it has {', '.join(map(repr, splits)) or 'none'}); "
                "use a data set with 'train' and 'test' splits"
            )
    if isinstance(exc, NotImplementedError):
        return DataSourceError(
            f"tfds:{name} in {where} is not stored in a random-access format ({_first_line(exc)}); "
            f"re-prepare it with file_format='array_record': {_tfds_prepare_hint(name, data_dir)}"
        )
    return DataSourceError(f"tfds:{name}: cannot open split '{split}' ({_first_line(exc)}); check --data-dir")


def _read_records(ds, n: int) -> list:
    """All records of a tfds data source; batched ``__getitems__`` when it works."""
    records: list = []
    getitems = getattr(ds, "__getitems__", None)
    if getitems is not None:
        try:
            for start in range(0, n, _TFDS_CHUNK):
                records.extend(getitems(list(range(start, min(n, start + _TFDS_CHUNK)))))
            if len(records) == n:
                return records
        except TypeError:  # e.g. tfds.testing.mock_data's __getitems__ in tfds 4.9.10
            pass
    return [ds[i] for i in range(n)]


def _load_tfds(name: str, *, data_dir: str | None, download: bool, text: dict | None = None) -> data_lib.Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataSourceError(
            f"tfds:{name} needs tensorflow-datasets: pip install tensorflow-datasets array-record "
            "(or use --data digits / --data idx:<dir>)"
        ) from None
    if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)) and not download:
        raise DataSourceError(
            f"tfds:{name}: data dir {data_dir} does not exist; pass the directory holding prepared TFDS data "
            "(default ~/tensorflow_datasets)"
        )
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    not_found = getattr(tfds.core, "DatasetNotFoundError", ())

    sources = {}
    for split in _TFDS_SPLITS:
        try:
            sources[split] = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=download,
                builder_kwargs={"file_format": "array_record"},
            )
        except not_found:
            raise DataSourceError(
                f"tfds:{name}: no such TFDS data set; see https://www.tensorflow.org/datasets/catalog "
                "(e.g. tfds:mnist, tfds:fashion_mnist)"
            ) from None
        except Exception as e:  # noqa: BLE001 - tfds raises many kinds; _tfds_error explains
            raise _tfds_error(tfds, name, data_dir, split, e) from None

    info = getattr(sources["train"], "dataset_info", None)
    features = getattr(info, "features", None)
    if features is not None and hasattr(features, "keys") and "text" in features.keys():
        return _tfds_text(name, sources, **(text or {}))
    if features is not None and hasattr(features, "keys"):
        keys = list(features.keys())
        missing = [k for k in ("image", "label") if k not in keys]
        if missing:
            raise DataSourceError(
                f"tfds:{name} has features {keys}, not 'image' and 'label'; use an image classification data set"
            )

    arrays = {}
    for split, ds in sources.items():
        records = _read_records(ds, len(ds))
        if records and not all(k in records[0] for k in ("image", "label")):
            raise DataSourceError(
                f"tfds:{name} records have keys {sorted(records[0])}, not 'image' and 'label'; "
                "use an image classification data set"
            )
        images = (
            np.stack([np.asarray(r["image"]) for r in records])
            if records
            else np.zeros((0, 1, 1, 1), np.uint8)
        )
        labels = np.asarray([np.asarray(r["label"]).item() for r in records], dtype=np.int64)
        arrays[split] = (images, labels)

    num_classes = None
    try:
        num_classes = int(features["label"].num_classes)
    except Exception:  # noqa: BLE001 - label feature without num_classes: fall back to the data
        num_classes = None
    x_tr, y_tr = arrays["train"]
    x_te, y_te = arrays["test"]
    if x_te.shape[0] == 0:
        x_te = np.zeros((0,) + x_tr.shape[1:], x_tr.dtype)
    max_value = 255 if np.issubdtype(x_tr.dtype, np.integer) else 1.0
    try:
        return data_lib.make_dataset(
            x_tr, y_tr, x_te, y_te, name=f"tfds:{name}", num_classes=num_classes, max_value=max_value
        )
    except ValueError as e:
        raise DataSourceError(f"tfds:{name}: {e}") from None


# --- text ---------------------------------------------------------------------------------------


def _text_files(path: str) -> list[str]:
    """The regular files of a ``text:`` path: the file itself, or a folder's files (recursively, sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataSourceError(f"text:{path} is neither a file nor a folder; {_TEXT_HINT}")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for n in sorted(names):
            f = os.path.join(root, n)
            if n.startswith(".") or n.endswith(TEXT_SKIP_SUFFIXES) or os.path.islink(f) or not os.path.isfile(f):
                continue
            files.append(f)
    if not files:
        raise DataSourceError(f"text:{path}: the folder holds no text files (after leaving out links, hidden files "
                              f"and {', '.join(TEXT_SKIP_SUFFIXES)}); {_TEXT_HINT}")
    return files


def read_text_bytes(path: str) -> bytes:
    """The bytes of a ``text:`` path: a UTF-8 file, or a folder's UTF-8 files concatenated in sorted path order.

    In a folder (walked recursively, in sorted order) hidden files, symbolic
    links and names ending in :data:`TEXT_SKIP_SUFFIXES` are left out. Every
    file read must be UTF-8 text.

    Raises:
      DataSourceError: (one line) a missing path, an unreadable, non-UTF-8 or
        (for a single file) empty file, or a folder with no text.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name, body in (("b", b"world"), ("a", b"hello "), ("a.dat", b"\\x00")):
    ...     with open(os.path.join(d, name), "wb") as f:
    ...         _ = f.write(body)
    >>> read_text_bytes(d)
    b'hello world'
    """
    chunks = []
    for f in _text_files(path):
        try:
            with open(f, "rb") as fh:
                raw = fh.read()
        except OSError as e:
            raise DataSourceError(f"text:{path}: cannot read {f} ({_first_line(e)}); check its permissions") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataSourceError(
                f"text:{path}: {f} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                "convert it to UTF-8 or leave it out"
            ) from None
        chunks.append(raw)
    data = b"".join(chunks)
    if not data:
        raise DataSourceError(f"text:{path}: the text is empty; {_TEXT_HINT}")
    return data


def load_text_source(
    spec: str,
    context: int = 128,
    *,
    test_fraction: float = 0.1,
    stride: int | None = None,
    max_test_windows: int | None = None,
    data_dir: str | None = None,
) -> data_lib.Dataset:
    """Loads ``text:<path>`` (or ``tfds:<name>`` with a ``text`` feature) as byte-level text windows.

    ``text:<path>``: :func:`read_text_bytes`, then :func:`asgd_jax.data.text_dataset`:
    the last ``test_fraction`` of the byte stream is the test text, windows of
    ``context`` bytes (``stride`` default ``context``) with next-byte targets;
    ``max_test_windows`` evenly spaced test windows are kept. ``tfds:<name>``:
    the ``train`` split's texts joined as training text, the ``test`` split's as
    test text (``test_fraction`` unused). Name: the spec.

    Raises:
      DataSourceError: (one line) see :func:`read_text_bytes`; a context longer than the text allows.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("abcdefghij" * 10)
    >>> ds = load_text_source("text:" + path, context=8)
    >>> ds.num_train, ds.num_test, ds.x_train.shape, bytes(ds.x_train[1].astype("u1"))
    (11, 1, (11, 8), b'ijabcdef')
    """
    kind, arg = parse_source(spec)
    opts = dict(context=context, stride=stride, max_test_windows=max_test_windows)
    if kind == "tfds":
        return _load_tfds(arg, data_dir=data_dir, download=False, text=opts)
    if kind != "text":
        raise DataSourceError(f"{spec} is not a text source; write text:<file or folder> or tfds:tiny_shakespeare")
    try:
        return data_lib.text_dataset(read_text_bytes(arg), test_fraction=test_fraction, name=spec, **opts)
    except ValueError as e:
        raise DataSourceError(f"{spec}: {e}") from None


def _tfds_text(name: str, sources: dict, context: int = 128, stride=None, max_test_windows=None):
    parts = {}
    for split, ds in sources.items():
        texts = [r["text"] for r in _read_records(ds, len(ds))]
        parts[split] = b"".join(t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts)
    try:
        return data_lib.text_dataset(parts["train"], context, None, test=parts["test"], stride=stride,
                                     max_test_windows=max_test_windows, name=f"tfds:{name}")
    except ValueError as e:
        raise DataSourceError(f"tfds:{name}: {e}") from None


# --- LIBSVM / svmlight --------------------------------------------------------------------------

LIBSVM_HELP = (
    "'libsvm:<path>' = a LIBSVM/svmlight text file, one sample a line: '<label> <index>:<value> ...' "
    "(indices one-based as LIBSVM writes them, or zero-based; optionally .gz/.bz2), binary labels "
    "(e.g. +1/-1 or 1/0, mapped to +1/-1); e.g. AsGrad's w7a or phishing from "
    "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html"
)
_LIBSVM_FORMAT = "expected a LIBSVM/svmlight text file, one sample a line: '<label> <index>:<value> ...'"
_MAX_DENSE_BYTES = 8 * 2**30


def parse_libsvm(spec: str) -> str:
    """Checks a ``libsvm:<path>`` spec without reading the file; returns the path (``~`` expanded).

    Raises:
      DataSourceError: (one line) not a ``libsvm:`` spec, an empty path, or no
        such file.

    Example:

    >>> try:
    ...     parse_libsvm("libsvm:/no/such/w7a")
    ... except DataSourceError as e:
    ...     print(e)
    libsvm:/no/such/w7a: no such file /no/such/w7a; download it from https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html or give the right path
    """
    if not isinstance(spec, str) or not spec.startswith("libsvm:"):
        raise DataSourceError(f"{spec!r} is not a LIBSVM source; write libsvm:<path>")
    path = spec[len("libsvm:") :]
    if not path.strip():
        raise DataSourceError(f"'{spec}': empty path; write libsvm:<path>, e.g. libsvm:data/w7a")
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise DataSourceError(f"{spec}: {path} is a directory; give the LIBSVM file itself")
    if not os.path.isfile(path):
        raise DataSourceError(
            f"{spec}: no such file {path}; download it from "
            "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html or give the right path"
        )
    return path


def _pm1(y: np.ndarray, spec: str) -> np.ndarray:
    """Binary labels to ``{-1, +1}``: of two values the smaller is -1; one value v is +1 if v > 0 else -1."""
    values = np.unique(y)
    if len(values) > 2:
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DataSourceError(
            f"{spec}: {len(values)} distinct labels ({shown}); logistic regression needs binary labels "
            "(e.g. +1/-1 or 1/0)"
        )
    if len(values) == 2:
        return np.where(y == values[1], 1.0, -1.0).astype(np.float32)
    return np.where(y > 0, 1.0, -1.0).astype(np.float32)


def load_libsvm(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a ``libsvm:<path>`` file into a dense float32 matrix and labels in ``{-1, +1}``.

    Parsing is ``sklearn.datasets.load_svmlight_file`` (``zero_based="auto"``: a
    file without index 0 is one-based, LIBSVM's convention; ``#`` comments and
    ``qid:`` fields are ignored; ``.gz``/``.bz2`` decompressed). Rows keep the
    file's order (AsGrad's contiguous split depends on it); the feature count
    is the largest index in the file. Binary labels are mapped to ``{-1, +1}``:
    of two distinct values the smaller becomes -1 (so ``+1/-1``, ``1/0`` and
    ``2/1`` all work); a file with one label value gives +1 if it is positive,
    else -1.

    Returns:
      ``(A, b)``: float32 ``(m, d)`` features and float32 ``(m,)`` labels.

    Raises:
      DataSourceError: (one line) a missing file, a line that is not
        ``<label> <index>:<value> ...``, no samples, more than two labels,
        non-finite values, or a matrix too large to hold densely.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.svm")
    >>> with open(path, "w") as f:
    ...     _ = f.write("+1 1:0.5 3:2\\n-1 2:1\\n")
    >>> A, b = load_libsvm("libsvm:" + path)
    >>> A.tolist(), b.tolist()
    ([[0.5, 0.0, 2.0], [0.0, 1.0, 0.0]], [1.0, -1.0])
    """
    path = parse_libsvm(spec)
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(path, zero_based="auto", dtype=np.float64)
    except (ValueError, OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise DataSourceError(f"{spec}: cannot parse ({_first_line(e)}); {_LIBSVM_FORMAT}") from None
    m, d = X.shape
    if m == 0:
        raise DataSourceError(f"{spec}: no samples in {path}; {_LIBSVM_FORMAT}")
    if m * d * 4 > _MAX_DENSE_BYTES:
        raise DataSourceError(
            f"{spec}: {m} x {d} features take {m * d * 4 / 2**30:.1f} GiB as a dense float32 matrix "
            f"(limit {_MAX_DENSE_BYTES / 2**30:.0f} GiB); use a smaller data set or fewer features"
        )
    A = np.asarray(X.toarray(), dtype=np.float32)
    if not (np.isfinite(A).all() and np.isfinite(y).all()):
        raise DataSourceError(f"{spec}: non-finite values (nan or inf) in {path}; fix or drop those lines")
    return A, _pm1(np.asarray(y), spec)
