"""Loading both layouts, the restricted unpickler, the cache, the download failure, statistics and splits.

Every dataset here is a few generated images in tmp_path; nothing reads the real CIFAR-10 or the network (the
download tests point the download URL at a local port that refuses connections).
"""

from __future__ import annotations

import builtins
import os
import pickle
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar import data
from cifar.data import (
    CifarDataError,
    channel_stats,
    find_dataset,
    load_cifar,
    stratified_split,
    stratified_subset,
)

CLASSES = tuple(f"class{i}" for i in range(10))


# ---------------------------------------------------------------- writers


def py2_pickle(obj: object) -> bytes:
    """``obj`` serialised the way Python 2's cPickle wrote the real CIFAR-10 batches: protocol 2, str as
    SHORT_BINSTRING/BINSTRING (bytes here), uint8 arrays through ``numpy.core.multiarray._reconstruct``."""
    out = bytearray(b"\x80\x02")

    def put(value: object) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                put(key)
                put(item)
            out.extend(b"u")
        elif isinstance(value, (list, tuple)):
            out.extend(b"](" if isinstance(value, list) else b"(")
            for item in value:
                put(item)
            out.extend(b"e" if isinstance(value, list) else b"t")
        elif isinstance(value, bytes):
            out.extend(b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value)))
            out.extend(value)
        elif value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))
        elif isinstance(value, np.ndarray) and value.dtype == np.uint8:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.extend(b"\x87R(")  # _reconstruct(ndarray, (0,), b"b"), then its state tuple:
            put(1)
            put(value.shape)
            out.extend(b"cnumpy\ndtype\n")
            put((b"u1", 0, 1))
            out.extend(b"R")
            put((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
            put(False)
            put(value.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"cannot write {value!r}")

    put(obj)
    out.extend(b".")
    return bytes(out)


def planar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC images as CIFAR rows: 1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    return np.stack([np.concatenate([image[:, :, c].ravel() for c in range(3)]) for image in images])


def write_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A complete fake cifar-10-batches-py with ``per_batch`` images in each of the six batches."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    meta = {b"label_names": [name.encode() for name in CLASSES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    parts: dict[str, list[np.ndarray]] = {"train_images": [], "train_labels": []}
    for name in (*data.TRAIN_BATCHES, data.TEST_BATCH):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, len(CLASSES), per_batch)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(label) for label in labels],
            b"data": planar_rows(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(py2_pickle(batch))
        split = "test" if name == data.TEST_BATCH else "train"
        parts.setdefault(f"{split}_images", []).append(images)
        parts.setdefault(f"{split}_labels", []).append(labels)
    return {key: np.concatenate(value) for key, value in parts.items()}


def gradient(seed: int) -> np.ndarray:
    """A smooth 32x32 RGB image (JPEG keeps it within a few levels), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32]
    a, b, c = rng.uniform(1, 3, 3)
    return np.stack([x * a * 2, y * b * 2, (x + y) * c], axis=-1).clip(0, 255).astype(np.uint8)


def write_image_folder(
    root: Path, per_class: dict[str, int], classes: tuple[str, ...] = ("cat", "airplane", "dog")
) -> None:
    """train/ and test/ class folders mixing .png, .jpg and .JPEG files, plus things to ignore."""
    seed = 0
    for split, count in per_class.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                suffix = (".png", ".jpg", ".JPEG")[i % 3]
                Image.fromarray(gradient(seed)).save(folder / f"{i:04d}{suffix}")
            (folder / "notes.txt").write_text("not an image")


def folder_arrays(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """What the loader should return for an image-folder split, by the documented rule, decoded with PIL."""
    classes = tuple(sorted(p.name for p in (root / "train").iterdir()))
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                images.append(np.asarray(Image.open(path).convert("RGB")))
                labels.append(label)
    return np.stack(images), np.array(labels), classes


def cache_files(folder: Path) -> list[Path]:
    return sorted((folder / data.CACHE_DIR).glob("cifar-*.npz"))


# ---------------------------------------------------------------- the two layouts


def test_py2_writer_writes_what_plain_pickle_reads() -> None:
    # The writer stands in for the real files, so check it against the reference unpickler first.
    images = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    content = pickle.loads(py2_pickle({b"data": images, b"labels": [1, 2]}), encoding="bytes")
    assert content[b"labels"] == [1, 2]
    np.testing.assert_array_equal(content[b"data"], images)


def test_batches_layout_gives_nhwc_images(tmp_path: Path) -> None:
    expected = write_batches(tmp_path / "cifar-10-batches-py")
    loaded = load_cifar(tmp_path)
    assert loaded.layout == "cifar-10-batches-py"
    assert loaded.source == tmp_path / "cifar-10-batches-py"
    assert loaded.classes == CLASSES
    assert loaded.train_images.shape == (20, 32, 32, 3) and loaded.train_images.dtype == np.uint8
    assert loaded.test_images.shape == (4, 32, 32, 3)
    assert loaded.train_labels.dtype == np.int64 and loaded.test_labels.dtype == np.int64
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(loaded, key), value, err_msg=key)
    # Pointing at the batches folder itself finds the same data.
    again = load_cifar(tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(again.train_images, expected["train_images"])


def test_image_folder_layout_one_level_down(tmp_path: Path) -> None:
    root = tmp_path / "cinic"
    write_image_folder(root, {"train": 4, "test": 2, "valid": 1})
    Image.fromarray(gradient(99)[:, :, 0]).save(root / "train" / "dog" / "9999.png")  # greyscale becomes RGB
    loaded = load_cifar(tmp_path)
    assert loaded.layout == "image-folder" and loaded.source == root
    assert loaded.classes == ("airplane", "cat", "dog")
    for split in ("train", "test"):
        images, labels, _ = folder_arrays(root, split)
        np.testing.assert_array_equal(getattr(loaded, f"{split}_images"), images)
        np.testing.assert_array_equal(getattr(loaded, f"{split}_labels"), labels)
    assert len(loaded.train_images) == 3 * 4 + 1 and len(loaded.test_images) == 3 * 2
    # Written cat (gradients 1-4), airplane (5-8), dog: airplane/0000.png comes first, exactly; 0001.jpg close.
    np.testing.assert_array_equal(loaded.train_images[0], gradient(5))
    assert np.abs(loaded.train_images[1].astype(int) - gradient(6)).max() < 40
    grey = loaded.train_images[-1]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


@pytest.mark.slow  # starts a pool of worker processes
def test_parallel_decode_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path, {"train": 6, "test": 3})
    serial = load_cifar(tmp_path)
    for path in cache_files(tmp_path):
        path.unlink()
    monkeypatch.setattr(data, "_DECODE_CHUNK", 4)  # several chunks, hence worker processes
    monkeypatch.setattr(data, "usable_cpus", lambda: 2)
    parallel = load_cifar(tmp_path)
    assert not parallel.cache_hit
    np.testing.assert_array_equal(parallel.train_images, serial.train_images)
    np.testing.assert_array_equal(parallel.test_labels, serial.test_labels)


# ---------------------------------------------------------------- cache


def test_second_load_hits_the_cache_and_changes_rebuild_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path, {"train": 3, "test": 2})
    first = load_cifar(tmp_path)
    assert not first.cache_hit and first.cache_path is not None and first.cache_path.is_file()

    with monkeypatch.context() as patched:  # a hit decodes no image
        patched.setattr(data, "_decode_split", lambda files: pytest.fail("decoded images despite a cache"))
        second = load_cifar(tmp_path)
    assert second.cache_hit
    np.testing.assert_array_equal(second.train_images, first.train_images)
    assert (second.classes, second.mean, second.std) == (first.classes, first.mean, first.std)

    changed = tmp_path / "train" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse-clock filesystem
    third = load_cifar(tmp_path)
    assert not third.cache_hit and third.cache_path != first.cache_path
    assert (third.train_images[third.train_labels == 1][0] == 7).all()  # cat is label 1

    Image.fromarray(gradient(123)).save(tmp_path / "test" / "dog" / "0100.png")
    fourth = load_cifar(tmp_path)
    assert not fourth.cache_hit and len(fourth.test_images) == len(third.test_images) + 1
    assert load_cifar(tmp_path).cache_hit
    assert cache_files(tmp_path) == [fourth.cache_path]  # stale caches are deleted


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    write_image_folder(tmp_path, {"train": 2, "test": 1})
    first = load_cifar(tmp_path)
    assert first.cache_path is not None
    if damage == "truncate":
        os.truncate(first.cache_path, first.cache_path.stat().st_size // 2)
    else:
        first.cache_path.write_bytes(b"\x00garbage" * 100)
    rebuilt = load_cifar(tmp_path)
    assert not rebuilt.cache_hit
    np.testing.assert_array_equal(rebuilt.train_images, first.train_images)
    assert load_cifar(tmp_path).cache_hit


def test_batches_layout_is_cached_too(tmp_path: Path) -> None:
    write_batches(tmp_path / "cifar-10-batches-py")
    assert not load_cifar(tmp_path).cache_hit
    assert load_cifar(tmp_path).cache_hit


# ---------------------------------------------------------------- bad batch files


def test_truncated_batch_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    path = folder / "data_batch_3"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(CifarDataError, match="data_batch_3' is truncated or corrupt"):
        load_cifar(tmp_path)


def test_missing_batch_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(CifarDataError, match="lacks test_batch"):
        load_cifar(tmp_path)


class _RunsCode:
    def __init__(self, function: object, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.function, (self.argument,)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    marker = tmp_path / "PWNED"
    payload = (
        _RunsCode(os.system, f"touch {marker}")
        if how == "os.system"
        else _RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').close()")
    )
    (folder / "data_batch_2").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CifarDataError, match=r"refused to unpickle .*data_batch_2") as excinfo:
        load_cifar(tmp_path)
    assert ("posix.system" if how == "os.system" else "__builtin__.eval") in str(excinfo.value)
    assert not marker.exists()


# ---------------------------------------------------------------- nothing there, download, ambiguity


def test_empty_folder_without_download_says_where_what_and_how(tmp_path: Path) -> None:
    with pytest.raises(CifarDataError) as excinfo:
        load_cifar(tmp_path, download=False)
    message = str(excinfo.value)
    for needed in (str(tmp_path), "cifar-10-batches-py", "train/<class>", "--data-dir", "tar xzf", "--no-download"):
        assert needed in message


@pytest.fixture
def offline(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    """A machine without network: the download URL points at a local port that refuses connections. Returns the
    (address, timeout) of every connection attempted, which still go through."""
    attempts: list[tuple[object, object]] = []
    connect = socket.create_connection

    def recording(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        return connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(data, "DOWNLOAD_URL", f"https://127.0.0.1:{closed_port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(socket, "create_connection", recording)
    return attempts


def test_download_without_network_fails_after_one_probe_naming_the_fix(tmp_path: Path, closed_port: int,
                                                                        offline: list) -> None:
    with pytest.raises(CifarDataError) as excinfo:
        load_cifar(tmp_path / "data", download=True)
    assert offline == [(("127.0.0.1", closed_port), 5.0)]  # one probe of the URL's host and port, 5 s at most
    message = str(excinfo.value)
    for needed in ("cannot download CIFAR-10: 127.0.0.1 is unreachable", str(tmp_path / "data"),
                   "cifar-10-batches-py", "train/<class>", "--data-dir", "--no-download"):
        assert needed in message
    assert not (tmp_path / "data").exists()


def test_a_probe_that_gets_no_answer_gives_up_at_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection attempt that hangs (a DNS lookup or handshake that never answers) does not hold the download
    up: the probe gives up at its timeout, shortened here, while the attempt is still hanging."""
    release = threading.Event()

    def hanging(address, timeout=None, *args, **kwargs):
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hanging)
    monkeypatch.setattr(data, "_NETWORK_TIMEOUT_S", 0.05)
    try:
        with pytest.raises(CifarDataError, match=r"cannot download CIFAR-10: www\.cs\.toronto\.edu is unreachable "
                                                 r"\(no answer within 0\.05 s\)"):
            load_cifar(tmp_path / "data", download=True)  # had it waited for the attempt: "(released)", a minute on
    finally:
        release.set()


def test_two_datasets_below_the_folder_is_an_error(tmp_path: Path) -> None:
    write_batches(tmp_path / "cifar-10-batches-py")
    write_image_folder(tmp_path / "cifar10-jpeg", {"train": 1, "test": 1})
    with pytest.raises(CifarDataError, match=r"holds 2 datasets.*--data-dir"):
        find_dataset(tmp_path)
    assert find_dataset(tmp_path / "cifar10-jpeg") == (tmp_path / "cifar10-jpeg", "image-folder")


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "a", {"train": 1, "test": 1})
    (tmp_path / "a" / "test" / "cat").rename(tmp_path / "a" / "test" / "kitten")
    with pytest.raises(CifarDataError, match=r"different class folders: train \['airplane', 'cat', 'dog'\]"):
        load_cifar(tmp_path / "a")

    write_image_folder(tmp_path / "b", {"train": 1})
    with pytest.raises(CifarDataError, match="without 'test/'"):
        load_cifar(tmp_path / "b")

    write_image_folder(tmp_path / "c", {"train": 1, "test": 1})
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "c" / "train" / "dog" / "big.png")
    with pytest.raises(CifarDataError, match=r"big\.png' is 16x16 pixels"):
        load_cifar(tmp_path / "c")


# ---------------------------------------------------------------- statistics


def test_mean_and_std_are_the_training_split_statistics(tmp_path: Path) -> None:
    expected = write_batches(tmp_path / "cifar-10-batches-py", seed=3)
    loaded = load_cifar(tmp_path)
    pixels = expected["train_images"].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(loaded.mean, pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(loaded.std, pixels.std(axis=0), atol=1e-12)
    cached = load_cifar(tmp_path)
    assert cached.cache_hit and (cached.mean, cached.std) == (loaded.mean, loaded.std)


def test_channel_stats_on_known_images() -> None:
    images = np.zeros((5000, 2, 2, 3), np.uint8)  # more than one 4096-image chunk
    images[:2500, ..., 0] = 255
    images[..., 1] = 51
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (0.5, 0.2, 0.0), atol=1e-12)
    np.testing.assert_allclose(std, (0.5, 0.0, 0.0), atol=1e-12)


# ---------------------------------------------------------------- splits


@pytest.fixture
def labels() -> np.ndarray:
    # Unequal classes, shuffled: 10 classes with 30..39 images each.
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), np.arange(30, 40)))


def test_validation_split_is_stratified_disjoint_and_seeded(labels: np.ndarray) -> None:
    train, val = stratified_split(labels, 50, seed=1)
    assert np.bincount(labels[val], minlength=10).tolist() == [5] * 10
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert train.dtype == np.int64 and val.dtype == np.int64
    again_train, again_val = stratified_split(labels, 50, seed=1)
    np.testing.assert_array_equal(again_val, val)
    np.testing.assert_array_equal(again_train, train)
    assert not np.array_equal(stratified_split(labels, 50, seed=2)[1], val)


def test_remainder_is_spread_one_per_class_by_the_seed(labels: np.ndarray) -> None:
    _, val = stratified_split(labels, 23, seed=1)
    counts = np.bincount(labels[val], minlength=10)
    assert sorted(counts.tolist()) == [2] * 7 + [3] * 3
    other = np.bincount(labels[stratified_split(labels, 23, seed=5)[1]], minlength=10)
    assert sorted(other.tolist()) == sorted(counts.tolist())


def test_subset_is_stratified_and_seeded(labels: np.ndarray) -> None:
    subset = stratified_subset(labels, 100, seed=4)
    assert np.bincount(labels[subset], minlength=10).tolist() == [10] * 10
    assert len(np.unique(subset)) == 100
    np.testing.assert_array_equal(stratified_subset(labels, 100, seed=4), subset)
    assert not np.array_equal(stratified_subset(labels, 100, seed=5), subset)


def test_no_validation_split_keeps_everything(labels: np.ndarray) -> None:
    train, val = stratified_split(labels, 0, seed=1)
    assert len(val) == 0 and len(train) == len(labels)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda y: stratified_split(y, len(y), 0), "leaves no training image"),
        (lambda y: stratified_split(y, 5, 0), "cannot hold every one of the 10 classes"),
        (lambda y: stratified_subset(y, len(y) + 1, 0), "there are only 345"),
        (lambda y: stratified_subset(y, 9, 0), "ask for at least 10"),
        (lambda y: stratified_subset(y, 340, 0), "which has only 30: ask for at most 300"),
        (lambda y: stratified_split(y, 10, -1), r"integers in \[0, 2\*\*64\), got seed=-1"),
    ],
)
def test_impossible_sizes_are_refused(labels: np.ndarray, call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(labels)  # type: ignore[operator]
