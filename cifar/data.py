"""CIFAR-10 from disk (or the network) into uint8 arrays, its channel statistics, and seeded splits.

``load_cifar(data_dir)`` finds the dataset under ``data_dir`` in either of two layouts:

* ``cifar-10-batches-py``: torchvision's pickled batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``, ``batches.meta``), read with an unpickler that admits only what those files contain;
* image folder: ``train/<class>/*.{png,jpg,jpeg}`` and ``test/<class>/*`` (the shared JPEG copy, CINIC-10;
  other folders such as CINIC-10's ``valid/`` are ignored). Classes are the sorted ``train/`` subfolder names.

Search rule: ``data_dir`` itself, then each of its immediate subfolders (hidden ones skipped), nothing deeper.
A folder is a batches folder when it holds any of the batch files, an image folder when it holds ``train/`` or
``test/``. So ``--data-dir data`` finds torchvision's ``data/cifar-10-batches-py/`` and a tarball unpacked as
``data/cifar10-jpeg/``; two datasets among the subfolders is an error that lists them.

Whatever the layout, the decoded arrays and the training split's channel mean/std go into one cache file,
``<dataset folder>/.cifar-cache/cifar-<fingerprint>.npz``. The fingerprint hashes the dataset's file list with
sizes and mtimes, so any change to the files selects a new cache file and the old one is deleted; writes go
through a temporary file and a rename, so a killed run leaves no half-written cache, and an unreadable cache is
rebuilt. Images stay uint8 NHWC ``(N, 32, 32, 3)``, labels int64.
"""

from __future__ import annotations

import concurrent.futures
import enum
import hashlib
import os
import pickle
import random
import socket
import struct
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from cifar.hardware import usable_cpus

Layout = Literal["cifar-10-batches-py", "image-folder"]

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Read when a download starts, so tests can point it elsewhere; the probe connects to its host and port.
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_MD5 = "c58f30108f718f92721af3b95e74349a"
CACHE_DIR = ".cifar-cache"
IMAGE_SHAPE = (32, 32, 3)

# Part of the fingerprint: bump it when the cache's contents change meaning, so old caches are not read.
_CACHE_VERSION = 1
# Long enough for a slow DNS answer and TCP handshake, short enough that an offline node fails at once.
_NETWORK_TIMEOUT_S = 5.0
# Files per decode task: small enough to spread 60,000 files over many cores, large enough that a task
# is worth a round trip to a worker process (below one chunk, decoding stays in this process).
_DECODE_CHUNK = 1024

_LAYOUTS_HELP = (
    f"torchvision's '{BATCHES_DIR}/' (data_batch_1..5, test_batch, batches.meta) or an image folder "
    "'train/<class>/*.png|jpg|jpeg' with 'test/<class>/...'"
)
_FIX_HELP = (
    "point the trainer's --data-dir at a folder holding one of them (or one level above it), "
    "e.g. unpack the shared copy with 'tar xzf cifar10-jpeg.tar.gz -C data/'"
)


class CifarDataError(RuntimeError):
    """The data on disk (or its download) cannot give CIFAR-10 arrays; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class CifarArrays:
    """CIFAR-10 in memory, as ``load_cifar`` returns it.

    Attributes:
        train_images, test_images: uint8 ``(N, 32, 32, 3)`` RGB.
        train_labels, test_labels: int64 ``(N,)`` indices into ``classes``.
        classes: class names, label order.
        mean, std: per-channel statistics of ``train_images`` in [0, 1] units (population std).
        source: the folder the dataset was read from.
        layout: ``"cifar-10-batches-py"`` or ``"image-folder"``.
        cache_hit: whether the arrays came from the cache rather than from decoding.
        cache_path: the cache file, or None when it could not be written (read-only folder).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: Path
    layout: Layout
    cache_hit: bool
    cache_path: Path | None


# ---------------------------------------------------------------- top level


def load_cifar(data_dir: str | os.PathLike[str], download: bool = False) -> CifarArrays:
    """Load CIFAR-10 found under ``data_dir`` (see the module docstring for the search rule and cache).

    Args:
        data_dir: the folder to search (the trainer's ``--data-dir``).
        download: when nothing is found, download torchvision's archive (md5-checked) into ``data_dir``.
            Only one process should download; the others call with ``download=False`` once it is done.

    Raises:
        CifarDataError: nothing found (and no download asked for, or it failed), ambiguous or malformed data.
    """
    root = Path(data_dir).expanduser()
    found = find_dataset(root)
    if found is None:
        if not download:
            raise CifarDataError(
                f"no CIFAR-10 dataset in '{root}' (searched it and its immediate subfolders): expected "
                f"{_LAYOUTS_HELP}. Either {_FIX_HELP}, or let the trainer download it there (it does unless "
                "given --no-download)."
            )
        download_cifar(root)
        found = find_dataset(root)
        if found is None:
            raise CifarDataError(
                f"the download into '{root}' did not produce '{root / BATCHES_DIR}': "
                f"delete '{root}' and retry, or {_FIX_HELP}"
            )
    folder, layout = found
    listing = _list_image_folder(folder) if layout == "image-folder" else None
    files = _batch_paths(folder) if listing is None else [path for path, _ in listing.train + listing.test]
    cache = folder / CACHE_DIR / f"cifar-{_fingerprint(folder, files)}.npz"

    cached = _read_cache(cache)
    if cached is not None:
        return CifarArrays(**cached, source=folder, layout=layout, cache_hit=True, cache_path=cache)

    if listing is None:
        train_images, train_labels, test_images, test_labels, classes = _read_batches(folder)
    else:
        (train_images, train_labels), (test_images, test_labels) = map(_decode_split, (listing.train, listing.test))
        classes = listing.classes
    mean, std = channel_stats(train_images)
    arrays: dict[str, Any] = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
        "classes": classes,
        "mean": mean,
        "std": std,
    }
    written = _write_cache(cache, arrays)
    return CifarArrays(**arrays, source=folder, layout=layout, cache_hit=False, cache_path=cache if written else None)


def find_dataset(data_dir: str | os.PathLike[str]) -> tuple[Path, Layout] | None:
    """The dataset folder under ``data_dir`` and its layout, or None when there is none.

    Looks at ``data_dir`` itself, then at its immediate non-hidden subfolders.

    Raises:
        CifarDataError: two or more subfolders hold a dataset.
    """
    root = Path(data_dir).expanduser()
    layout = _layout_of(root)
    if layout is not None:
        return root, layout
    if not root.is_dir():
        return None
    found = [
        (child, child_layout)
        for child in sorted(root.iterdir())
        if child.is_dir() and not child.name.startswith(".") and (child_layout := _layout_of(child)) is not None
    ]
    if len(found) > 1:
        listing = ", ".join(f"'{path}' ({layout})" for path, layout in found)
        raise CifarDataError(f"'{root}' holds {len(found)} datasets: {listing}. Point --data-dir at the one to use.")
    return found[0] if found else None


def download_cifar(data_dir: str | os.PathLike[str]) -> None:
    """Download and unpack torchvision's CIFAR-10 archive into ``data_dir`` (giving ``cifar-10-batches-py/``).

    The server is probed first with a short timeout, so a machine without network fails in seconds.

    Raises:
        CifarDataError: the server is unreachable, or the download or its checksum failed.
    """
    root = Path(data_dir).expanduser()
    offline_help = (
        f"Nothing to load in '{root}' either: it should hold {_LAYOUTS_HELP}. On a machine without network, "
        f"{_FIX_HELP}; the trainer's --no-download then forbids any network access."
    )
    url = urlsplit(DOWNLOAD_URL)
    host = url.hostname or ""
    try:
        _probe(host, url.port or (80 if url.scheme == "http" else 443), _NETWORK_TIMEOUT_S)
    except OSError as error:
        raise CifarDataError(f"cannot download CIFAR-10: {host} is unreachable ({error}). {offline_help}") from error
    from torchvision.datasets.utils import download_and_extract_archive  # seconds to import: only when needed

    try:
        download_and_extract_archive(DOWNLOAD_URL, root, md5=DOWNLOAD_MD5, remove_finished=True)
    except (OSError, RuntimeError) as error:  # urllib errors are OSErrors; a checksum mismatch is a RuntimeError
        raise CifarDataError(
            f"downloading {DOWNLOAD_URL} into '{root}' failed ({error}); retry, or {_FIX_HELP}"
        ) from error


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 NHWC images, in [0, 1] units.

    Computed from 256-bin histograms, which is exact and needs no float copy of the images.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"channel_stats needs a non-empty uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}")
    counts = np.zeros((3, 256), np.int64)
    for start in range(0, len(images), 4096):  # bounded memory: bincount makes an int64 copy of its input
        pixels = images[start : start + 4096].reshape(-1, 3)
        for channel in range(3):
            counts[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256) / 255.0
    total = counts[0].sum()
    mean = counts @ values / total
    std = np.sqrt((counts * (values - mean[:, None]) ** 2).sum(axis=1) / total)
    return _triple(mean), _triple(std)


# ---------------------------------------------------------------- splits and seeded streams


class Stream(enum.IntEnum):
    """Independent random streams derived from the one run seed (distinct values keep them apart)."""

    SPLIT = 1
    ORDER = 2
    AUGMENT = 3
    BATCH_AUGMENT = 4


def keyed_rng(seed: int, stream: Stream, *key: int) -> np.random.Generator:
    """A generator whose stream is a pure function of ``(seed, stream, *key)``, on any process or machine."""
    bits = np.random.PCG64()
    bits.state = _pcg64_state(_key_digest(seed, stream, key)[:32])  # replaces the OS-entropy state
    return np.random.Generator(bits)


def reseed(
    numpy_random: np.random.Generator, python_random: random.Random, seed: int, stream: Stream, *key: int
) -> None:
    """Reset a PCG64 ``numpy_random`` and ``python_random`` in place to states that are a pure function of
    ``(seed, stream, *key)``.

    In place because it runs once per augmented sample: about 15 us, where building new generators from a
    SeedSequence costs about 45 us, a tenth of augmenting a CIFAR image.
    """
    digest = _key_digest(seed, stream, key)
    numpy_random.bit_generator.state = _pcg64_state(digest[:32])
    python_random.seed(int.from_bytes(digest[32:], "little"))  # the other half: independent of numpy's


def _key_digest(seed: int, stream: Stream, key: tuple[int, ...]) -> bytes:
    # BLAKE2b mixes every input bit into every output bit, so neighbouring keys give unrelated streams; fixed
    # 8-byte words make the encoding unambiguous.
    words = (seed, stream, *key)
    if not all(isinstance(word, (int, np.integer)) and 0 <= word < 2**64 for word in words):
        raise ValueError(f"seeds and keys must be integers in [0, 2**64), got seed={seed!r}, key={key!r}")
    return hashlib.blake2b(struct.pack(f"<{len(words)}Q", *words), digest_size=64).digest()


def _pcg64_state(digest: bytes) -> dict[str, Any]:
    return {
        "bit_generator": "PCG64",
        # PCG64's increment must be odd.
        "state": {"state": int.from_bytes(digest[:16], "little"), "inc": int.from_bytes(digest[16:32], "little") | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }


def stratified_split(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``n_val`` images as a validation split with the same share of every class.

    Each class gives ``n_val // num_classes`` images; the remainder goes one each to classes the seed picks.
    ``n_val == 0`` means no validation split.

    Returns:
        (train indices, validation indices): sorted int64 positions in ``labels``, disjoint, covering all.

    Raises:
        ValueError: ``n_val`` is negative, between 1 and num_classes - 1, leaves no training image, or asks
            a class for more images than it has.
    """
    labels = _check_labels(labels)
    if n_val == 0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, np.int64)
    if n_val >= len(labels):
        raise ValueError(
            f"a validation split of {n_val} images leaves no training image out of {len(labels)}: "
            f"ask for fewer than {len(labels)}"
        )
    val = _stratified_pick(labels, n_val, seed, "validation split")
    return np.setdiff1d(np.arange(len(labels), dtype=np.int64), val, assume_unique=True), val


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick ``n`` images with the same share of every class (for quick runs); rules as ``stratified_split``.

    Returns:
        sorted int64 positions in ``labels``.
    """
    labels = _check_labels(labels)
    if n > len(labels):
        raise ValueError(f"a subset of {n} images asked for, but there are only {len(labels)}: ask for fewer")
    return _stratified_pick(labels, n, seed, "subset")


def _stratified_pick(labels: np.ndarray, n: int, seed: int, what: str) -> np.ndarray:
    classes, counts = np.unique(labels, return_counts=True)
    if n < len(classes):
        raise ValueError(
            f"a stratified {what} of {n} images cannot hold every one of the {len(classes)} classes: "
            f"ask for at least {len(classes)}"
        )
    rng = keyed_rng(seed, Stream.SPLIT)
    quota = np.full(len(classes), n // len(classes))
    quota[rng.permutation(len(classes))[: n % len(classes)]] += 1
    short = np.flatnonzero(quota > counts)
    if short.size:
        label = classes[short[0]]
        raise ValueError(
            f"a stratified {what} of {n} images needs {quota[short[0]]} of class {label}, which has only "
            f"{counts[short[0]]}: ask for at most {counts.min() * len(classes)}"
        )
    picked = [
        rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels


# ---------------------------------------------------------------- layouts


def _layout_of(folder: Path) -> Layout | None:
    if any((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH, META_FILE)):
        return "cifar-10-batches-py"
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return "image-folder"
    return None


def _batch_paths(folder: Path) -> list[Path]:
    paths = [folder / name for name in (*TRAIN_BATCHES, TEST_BATCH, META_FILE)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise CifarDataError(
            f"'{folder}' looks like torchvision's {BATCHES_DIR} but lacks {', '.join(missing)}: "
            f"delete '{folder}' and let the trainer download it again, or {_FIX_HELP}"
        )
    return paths


def _read_batches(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    meta = _unpickle(folder / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(name, bytes) for name in names):
        raise _corrupt(folder / META_FILE, "its 'label_names' is not a list of names")
    classes = tuple(name.decode("latin-1") for name in names)
    train = [_read_batch(folder / name, len(classes)) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(folder / TEST_BATCH, len(classes))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels, classes


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    rows = int(np.prod(IMAGE_SHAPE))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == rows):
        raise _corrupt(path, f"its 'data' is not a uint8 (N, {rows}) array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(x) is int for x in labels):
        raise _corrupt(path, f"its 'labels' is not a list of {len(data)} integers")
    label_array = np.asarray(labels, np.int64)
    if label_array.size and not 0 <= label_array.min() <= label_array.max() < num_classes:
        raise _corrupt(path, f"its labels leave the range 0..{num_classes - 1} of batches.meta's classes")
    # Each row is planar: 1024 red, 1024 green, 1024 blue values, each plane row-major.
    images = data.reshape(-1, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2]).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), label_array


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# A CIFAR batch is a dict of bytes, ints, lists and one numpy array; the array is the only thing pickled by
# reference, as _reconstruct(ndarray, ...) with a dtype. Nothing else may be looked up, so a file asking for,
# say, os.system fails at the lookup, before anything could be called.
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's own reference, without importing the deprecated numpy.core
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the name in the original (numpy 1) files
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the same function under numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    """One batch file as a dict with str keys; Python 2 strings come back as bytes, as in the original."""
    try:
        with path.open("rb") as file:
            content = _BatchUnpickler(file, encoding="bytes").load()
    except _RefusedGlobal as refused:
        allowed = ", ".join(sorted({f"{module}.{name}" for module, name in _ALLOWED_GLOBALS}))
        raise CifarDataError(
            f"refused to unpickle '{path}': it asks for '{refused.name}', which a CIFAR-10 batch never contains "
            f"(allowed: {allowed}). The file is not a CIFAR-10 batch and may be malicious: delete it and "
            f"download the dataset again, or {_FIX_HELP}"
        ) from None
    except OSError as error:
        raise CifarDataError(f"cannot read '{path}': {error}") from error
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError...)
        raise _corrupt(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(content, dict) or not all(isinstance(key, (bytes, str)) for key in content):
        raise _corrupt(path, "it does not hold a dict")
    return {key.decode("latin-1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _corrupt(path: Path, why: str) -> CifarDataError:
    return CifarDataError(
        f"'{path}' is truncated or corrupt ({why}): delete '{path.parent}' and let the trainer download it "
        f"again, or {_FIX_HELP}"
    )


class _ImageListing(NamedTuple):
    classes: tuple[str, ...]
    train: list[tuple[str, int]]  # (file, label), in class then file-name order
    test: list[tuple[str, int]]


def _list_image_folder(folder: Path) -> _ImageListing:
    class_dirs: dict[str, list[Path]] = {}
    for split in ("train", "test"):
        split_dir = folder / split
        if not split_dir.is_dir():
            raise CifarDataError(
                f"'{folder}' is an image folder without '{split}/': it needs both train/<class>/ and "
                f"test/<class>/; add it, or {_FIX_HELP}"
            )
        class_dirs[split] = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(path.name for path in class_dirs["train"])
    test_classes = tuple(path.name for path in class_dirs["test"])
    if classes != test_classes:
        raise CifarDataError(
            f"'{folder}': train/ and test/ have different class folders: train {list(classes)}, "
            f"test {list(test_classes)}; make them the same"
        )
    if not classes:
        raise CifarDataError(f"'{folder / 'train'}' has no class folders: expected train/<class>/*.png|jpg|jpeg")
    return _ImageListing(classes, _list_split(class_dirs["train"]), _list_split(class_dirs["test"]))


def _list_split(class_dirs: list[Path]) -> list[tuple[str, int]]:
    files = []
    for label, class_dir in enumerate(class_dirs):
        with os.scandir(class_dir) as entries:  # scandir, not Path.iterdir: 60,000 files, no stat per file
            images = sorted(
                (e.name, e.path) for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()
            )
        if not images:
            raise CifarDataError(
                f"'{class_dir}' holds no {'/'.join(IMAGE_SUFFIXES)} image: add its images or remove the folder"
            )
        files += [(path, label) for _, path in images]
    return files


def _decode_split(files: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    paths = [path for path, _ in files]
    labels = np.array([label for _, label in files], np.int64)
    chunks = [paths[start : start + _DECODE_CHUNK] for start in range(0, len(paths), _DECODE_CHUNK)]
    workers = min(len(chunks), usable_cpus())
    if workers <= 1:
        return _decode_files(paths), labels
    # Processes, not threads: for 32x32 files the time goes to Python-level PIL calls that hold the GIL.
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(_decode_files, chunks))), labels


def _decode_files(paths: Sequence[str]) -> np.ndarray:
    images = np.empty((len(paths), *IMAGE_SHAPE), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                if image.size != IMAGE_SHAPE[1::-1]:
                    raise CifarDataError(
                        f"'{path}' is {image.size[0]}x{image.size[1]} pixels, CIFAR-10 images are 32x32: "
                        "resize or remove it"
                    )
                images[i] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise CifarDataError(f"cannot decode '{path}' ({error}): replace or delete the file") from error
    return images


# ---------------------------------------------------------------- cache


def _fingerprint(folder: Path, files: Sequence[str | Path]) -> str:
    digest = hashlib.sha256(f"cifar cache v{_CACHE_VERSION}\n".encode())
    prefix = len(str(folder)) + 1
    for path in map(str, files):
        stat = os.stat(path)
        digest.update(f"{path[prefix:]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, Any] | None:
    """The cached arrays, or None when absent or unreadable (a damaged cache is rebuilt, never fatal)."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            return {
                "train_images": cache["train_images"],
                "train_labels": cache["train_labels"],
                "test_images": cache["test_images"],
                "test_labels": cache["test_labels"],
                "classes": tuple(str(name) for name in cache["classes"]),
                "mean": _triple(cache["mean"]),
                "std": _triple(cache["std"]),
            }
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):  # zip checks each member's CRC
        return None


def _write_cache(path: Path, arrays: dict[str, Any]) -> bool:
    """Write atomically (temporary file, then rename); False when that fails (read-only folder, full disk)."""
    try:
        path.parent.mkdir(exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    except OSError:
        return False
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **{key: np.asarray(value) for key, value in arrays.items()})
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; others sharing the data folder may read it
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            return False
        raise
    for stale in path.parent.glob("cifar-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return True


def _triple(values: Any) -> tuple[float, float, float]:
    first, second, third = (float(value) for value in values)
    return first, second, third


def _probe(host: str, port: int, timeout: float) -> None:
    """Connect to ``host:port`` within ``timeout`` seconds, name lookup included, or raise OSError.

    The connection runs in a daemon thread because a socket timeout does not bound the DNS lookup.
    """
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]
