"""Training checkpoints that a kill at any moment cannot leave half-written, and safetensors weight export.

A checkpoint is a folder ``step-000000123`` holding one ``torch.save`` file per payload (``model.pt``,
``optimizer.pt``, ...) and a ``manifest.json`` with each file's size and sha256. The folder is assembled under a
``.tmp-`` name, the manifest is written last, and only then is the folder renamed into place, so a folder that
carries a checkpoint name is complete; anything under a ``.tmp-`` name is debris from a stopped writer or
deleter, which listing ignores and :func:`prune_checkpoints` removes. The checksums catch what renaming cannot:
files damaged later (a full disk during a copy, a bad sync, bit rot).

Payloads are read back with ``torch.load(weights_only=True)``, which refuses to run code from a tampered or
foreign file; hence they may hold only tensors and plain Python values, which :func:`write_checkpoint` checks
before it writes anything. :func:`numpy_rng_state` turns numpy's global RNG state into such values, and
:func:`rng_state` gathers every random stream a training process draws from.

Weights alone are a safetensors file (:func:`save_weights`) whose metadata names the net and, with
:func:`input_metadata`, what its inputs and outputs mean; :func:`load_net` builds the net back from such a file,
from a checkpoint's ``model`` payload, or from a train.py run folder.

One process (the main one) writes, loads and prunes; these functions take no locks.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import safetensors
import safetensors.torch
import torch

from cifar.files import fsync_dir, write_atomic, write_durably
from cifar.nets import build_net

CHECKPOINT_FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS_PAYLOAD = "model"
RUN_WEIGHTS = "model.safetensors"  # a train.py run folder's final weights

_TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"step-(\d{9})")
_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAX_STEP = 10**9 - 1  # the largest step that keeps names 9 digits wide, hence sortable as text
_WRAPPER_PREFIXES = ("module", "_orig_mod")  # DDP's and torch.compile's attribute for the wrapped model
_HASH_CHUNK = 1 << 20

# renameat2(2) with RENAME_EXCHANGE swaps two names in one step; Python's os module does not expose it.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
if _renameat2 is not None:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, incomplete, corrupt or of an unknown format."""


def checkpoint_name(step: int) -> str:
    """The folder name for ``step``, zero-padded so that names sort in step order."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"step must be an integer in [0, {_MAX_STEP}]; got {step!r}")
    return f"step-{step:09d}"


def write_checkpoint(directory: Path, step: int, payloads: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write ``payloads`` (file stem -> object) as checkpoint ``step`` in ``directory``; return its folder.

    ``meta`` (JSON values: the run's settings, metrics) goes into the manifest, readable without torch. An
    existing checkpoint of the same step (a resumed run saving again) is replaced without a moment in which
    neither copy carries the name.

    Raises:
        ValueError: a payload name is not a plain file stem, or ``meta`` is not JSON-serializable.
        CheckpointError: a payload would not load back with ``weights_only=True``.
    """
    name = checkpoint_name(step)
    for stem in payloads:
        if not isinstance(stem, str) or not _STEM.fullmatch(stem):
            raise ValueError(f"payload name {stem!r} is not a plain file stem; use letters, digits, '_', '.', '-'")
    try:
        manifest_meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint meta must be JSON-serializable ({error}); pass str, int, float, bool, "
                         "None, lists and dicts with string keys") from error
    files: dict[str, dict[str, Any]] = {}
    directory.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(directory, name)
    temp.mkdir()
    try:
        for stem, obj in payloads.items():
            data = _serialize(stem, obj)
            write_durably(temp / f"{stem}.pt", data)
            files[f"{stem}.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "meta": manifest_meta, "files": files}
        write_durably(temp / MANIFEST, json.dumps(manifest, indent=2).encode())
        fsync_dir(temp)
        target = directory / name
        _install(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of checkpoint folder ``path``, unchecked against the files."""
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a folder; pass a folder written by "
                              "write_checkpoint (see list_checkpoints)")
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {MANIFEST}: the writer was stopped before "
                              "finishing); resume from an older checkpoint, prune_checkpoints deletes this one")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot read {MANIFEST} ({error}); resume from an older "
                              "checkpoint or delete this one") from error
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not a JSON object; resume from an older "
                              "checkpoint or delete this one")
    return manifest


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest of ``path`` once every file it lists has the recorded size and sha256.

    Raises:
        CheckpointError: the checkpoint is incomplete, corrupt, or of a format this code does not read.
    """
    manifest = read_manifest(path)
    found = manifest.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {found!r}, this code reads format "
                              f"{CHECKPOINT_FORMAT}; load it with the version of this project that wrote it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(_is_file_record(name, record) for name, record in files.items()):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} has no valid 'files' table (file name -> bytes, "
                              "sha256); resume from an older checkpoint or delete this one")
    for file_name, record in files.items():
        problem = _file_problem(path / file_name, record)
        if problem:
            raise CheckpointError(f"checkpoint {path} is corrupt: {file_name} {problem}; resume from an older "
                                  "checkpoint (latest_checkpoint skips this one) or delete it")
    return manifest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Every payload of the verified checkpoint ``path`` as {payload name: object}, tensors on the CPU."""
    manifest = verify_checkpoint(path)
    return {file_name.removesuffix(".pt"): _load_payload(path / file_name) for file_name in manifest["files"]}


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders in ``directory``, oldest step first: named like :func:`checkpoint_name` and holding
    a manifest, but unverified. Incomplete folders are left out; :func:`latest_checkpoint` reports them."""
    return [path for path in _named_folders(directory) if (path / MANIFEST).is_file()]


def latest_checkpoint(directory: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies (None if none does), and (path, reason) for each newer one skipped.

    Verification reads every byte, so it goes newest first and stops at the first good checkpoint.
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(_named_folders(directory)):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            skipped.append((path, str(error)))
        else:
            return path, skipped
    return None, skipped


def prune_checkpoints(directory: Path, keep_last: int, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete every checkpoint but the newest ``keep_last`` that verify and those in ``keep``; return them.

    Also deletes all ``.tmp-`` debris, which is why it must not run while a write into ``directory`` is under
    way. A corrupt or incomplete checkpoint never counts towards ``keep_last``, so damage cannot push the last
    good checkpoint out. Each checkpoint is renamed to a temporary name before its files go, so a kill
    mid-deletion leaves debris rather than a checkpoint with files missing.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"keep_last must be an integer >= 0; got {keep_last!r}")
    if not directory.is_dir():
        return []
    kept = {path.resolve() for path in keep}
    debris = sorted(entry for entry in directory.iterdir() if entry.name.startswith(_TEMP_PREFIX))
    doomed: list[Path] = []
    complete = 0
    for path in reversed(_named_folders(directory)):
        if complete < keep_last and _verifies(path):
            complete += 1
        elif path.resolve() not in kept:
            doomed.append(path)
    for entry in debris:
        _remove_tree_or_file(entry)
    for path in reversed(doomed):
        _remove_checkpoint(path)
    return debris + doomed[::-1]


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state as an unwrapped model's keys, copied to contiguous CPU tensors.

    Leading ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) components are stripped, so the result loads
    into a plain instance of the net. The copy decouples it from further training and gives tied weights
    their own storage, which safetensors requires.
    """
    plain: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        parts = key.split(".")
        while len(parts) > 1 and parts[0] in _WRAPPER_PREFIXES:
            parts = parts[1:]
        name = ".".join(parts)
        if name in plain:
            raise ValueError(f"state_dict key {key!r} becomes {name!r}, which another key already became once "
                             "'module.'/'_orig_mod.' prefixes are stripped; rename the submodule called "
                             "'module' or '_orig_mod'")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; safetensors "
                             "stores only tensors, so save this module with write_checkpoint instead")
        plain[name] = value.detach().to("cpu", copy=True).contiguous()
    return plain


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> Path:
    """Write ``state_dict`` (see :func:`plain_state_dict`) and ``metadata`` as a safetensors file at ``path``.

    The file appears complete or not at all (:func:`cifar.files.write_atomic`), and equal weights and metadata
    give equal bytes, so a file's checksum identifies a result.
    """
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; {bad!r} do not: convert the values with "
                         "str() or json.dumps()")
    return write_atomic(path, _sorted_metadata(safetensors.torch.save(dict(state_dict), metadata=dict(metadata))))


def _sorted_metadata(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its metadata keys in sorted order. safetensors writes them from a hash
    map whose order differs from process to process; the header is JSON of a fixed length, so reordering its
    keys changes nothing else in the file."""
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # safetensors wrote the JSON some other way: keep its file rather than break it
        return blob
    return blob[:8] + text.ljust(length) + blob[8 + length:]


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from a ``.safetensors`` file, or from a checkpoint folder's ``model`` payload.

    A checkpoint's metadata is its manifest's ``meta``, with non-string values as JSON text, so both sources
    give the same types.
    """
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a .safetensors file written by save_weights or a "
                              "checkpoint folder written by write_checkpoint")
    if path.is_dir():
        return _checkpoint_weights(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as weights:
            metadata = weights.metadata() or {}
            return {key: weights.get_tensor(key) for key in weights.keys()}, dict(metadata)
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); pass a file written by "
                              "save_weights, or export the weights again") from error


def input_metadata(mean: Iterable[float], std: Iterable[float], classes: Iterable[str]) -> dict[str, str]:
    """What a net's inputs and outputs mean, as weights metadata (JSON text, which both ``save_weights`` and a
    checkpoint's ``meta`` hold): ``mean`` and ``std``, the per-channel statistics of the training images in
    [0, 1] units that its inputs were normalised with, and ``classes``, what its outputs stand for in label
    order. Saved with the weights so that an export (``cifar.export``) needs no dataset."""
    return {"mean": json.dumps([float(value) for value in mean]), "std": json.dumps([float(value) for value in std]),
            "classes": json.dumps([str(name) for name in classes])}


def load_net(path: Path, default_name: str | None = None) -> tuple[torch.nn.Module, str, dict[str, str]]:
    """The net saved at ``path`` with its weights loaded, its registered name, and the weights' metadata.

    ``path`` is a ``.safetensors`` file, a checkpoint folder (see :func:`load_weights`), or a train.py run folder,
    which stands for its final ``model.safetensors``. The name comes from the metadata's ``model`` (train.py
    records it); ``default_name`` is used for weights that do not say.

    Raises:
        CheckpointError: ``path`` holds no weights, names an unknown net, or its weights do not fit the net.
    """
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).exists():
        if not (path / RUN_WEIGHTS).is_file():
            raise CheckpointError(f"{path} is neither a finished run (no {RUN_WEIGHTS}) nor a checkpoint (no "
                                  f"{MANIFEST}): pass a train.py run folder once the run has finished, its "
                                  "best.safetensors, a folder under its checkpoints/, or a .safetensors file")
        path = path / RUN_WEIGHTS
    weights, metadata = load_weights(path)
    name = metadata.get("model", default_name)
    if name is None:
        raise CheckpointError(f"{path} does not say which net it holds (no 'model' in its metadata): name the net "
                              "it was trained as (--model NAME; `python -m cifar.nets` lists them)")
    try:
        net = build_net(name)
    except ValueError as error:
        raise CheckpointError(f"{path} holds net {name!r}, which this code does not define ({error}): load it with "
                              "the version of this project that trained it") from None
    misfit = _state_dict_misfit(net.state_dict(), weights)
    if misfit:
        raise CheckpointError(f"{path}: its weights do not fit net {name!r} ({misfit}): name the net they were "
                              "trained as (--model NAME)")
    net.load_state_dict(weights)
    return net, name, metadata


def numpy_rng_state() -> dict[str, Any]:
    """numpy's legacy global RNG state (``np.random.get_state()``) as plain values that ``weights_only``
    loading accepts, which it does not for numpy arrays."""
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"bit_generator": str(bit_generator), "keys": keys.tolist(), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def set_numpy_rng_state(state: Mapping[str, Any]) -> None:
    """Restore numpy's legacy global RNG from a :func:`numpy_rng_state` dict."""
    try:
        legacy = (state["bit_generator"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                  state["has_gauss"], state["cached_gaussian"])
    except KeyError as error:
        raise ValueError(f"numpy RNG state lacks {error}; pass a dict made by numpy_rng_state()") from None
    np.random.set_state(legacy)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random stream a training process on ``device`` draws from, as plain values: torch's CPU generator,
    the generator of ``device`` when it is a GPU (the only GPU the process uses), numpy's and Python's.

    Only the process's own GPU is saved: a process sees every GPU of its node, and a state per visible GPU
    could not be restored where fewer are visible (another node, another ``CUDA_VISIBLE_DEVICES``). A CPU
    process leaves CUDA alone, so it never creates a context on a GPU it does not use.
    """
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": numpy_rng_state(), "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore a :func:`rng_state` dict in a process training on ``device``.

    The GPU stream is restored only onto a GPU and only when the state has one, so a checkpoint written on the
    CPU resumes on a GPU and vice versa (the GPU keeps the stream it was seeded with). Older checkpoints hold
    a list with one state per GPU the writer could see: the entry of ``device``'s index is taken, if it has one.
    """
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, index)
    set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])


def _serialize(stem: str, obj: Any) -> bytes:
    """``obj`` as ``torch.save`` bytes, refused now if it would not load with ``weights_only=True``: a resume
    is the worst time to find out."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise CheckpointError(f"payload {stem!r} would not load back with weights_only=True "
                              f"({_unpickler_reason(error)}); store only tensors and plain Python values "
                              "(numpy arrays as tensors or lists, numpy's RNG via numpy_rng_state())") from error
    return buffer.getvalue()


def _load_payload(file: Path) -> Any:
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"{file} cannot be loaded with weights_only=True ({_unpickler_reason(error)}); it "
                              "was not written by write_checkpoint or has been replaced, so it is refused "
                              "rather than run: resume from another checkpoint") from error


def _unpickler_reason(error: Exception) -> str:
    """The cause inside torch's weights_only error, without its advice to load with ``weights_only=False``."""
    text = str(error)
    _, marker, reason = text.partition("WeightsUnpickler error:")
    if marker:
        text = reason.partition("Check the documentation")[0]
    return " ".join(text.split())


def _checkpoint_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not (path / MANIFEST).exists():
        raise CheckpointError(f"{path} is a folder without {MANIFEST}, so not a checkpoint; pass a checkpoint "
                              "folder written by write_checkpoint (step-NNNNNNNNN) or a .safetensors file")
    manifest = verify_checkpoint(path)
    file_name = f"{WEIGHTS_PAYLOAD}.pt"
    if file_name not in manifest["files"]:
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_PAYLOAD!r} payload (it has "
                              f"{', '.join(manifest['files']) or 'none'}); save the model's state_dict under "
                              f"{WEIGHTS_PAYLOAD!r}")
    state = _load_payload(path / file_name)
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                              for key, value in state.items()):
        raise CheckpointError(f"checkpoint {path}: {file_name} is not a state_dict (str -> tensor); save the "
                              f"model's state_dict under {WEIGHTS_PAYLOAD!r}")
    meta = manifest.get("meta") or {}
    return state, {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}


def _state_dict_misfit(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``found`` does not load into a module whose state is ``expected``, in one line; None if it does."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [f"{key} {tuple(found[key].shape)} instead of {tuple(value.shape)}"
                for key, value in expected.items() if key in found and found[key].shape != value.shape]
    problems = [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in
                ((missing, "missing keys"), (unexpected, "unexpected keys"), (reshaped, "of another shape")) if keys]
    return "; ".join(problems) or None


def _is_file_record(name: object, record: object) -> bool:
    # The name must stay inside the checkpoint folder whatever the manifest says.
    return (isinstance(name, str) and name.endswith(".pt") and _STEM.fullmatch(name) is not None
            and isinstance(record, dict) and isinstance(record.get("bytes"), int)
            and isinstance(record.get("sha256"), str))


def _file_problem(file: Path, record: Mapping[str, Any]) -> str | None:
    """What is wrong with ``file`` against its manifest record, or None; the size is checked before hashing."""
    try:
        size = file.stat().st_size
        if size != record["bytes"]:
            return f"has {size} bytes, the manifest says {record['bytes']}"
        digest = hashlib.sha256()
        with open(file, "rb") as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return "is missing"
    except OSError as error:
        return f"cannot be read ({error})"
    if digest.hexdigest() != record["sha256"]:
        return f"has sha256 {digest.hexdigest()}, the manifest says {record['sha256']}"
    return None


def _named_folders(directory: Path) -> list[Path]:
    """Folders named like :func:`checkpoint_name`, complete or not, oldest step first."""
    if not directory.is_dir():
        return []
    found = [entry for entry in directory.iterdir() if _NAME.fullmatch(entry.name) and entry.is_dir()]
    return sorted(found, key=lambda entry: int(entry.name.removeprefix("step-")))


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _temp_path(directory: Path, name: str) -> Path:
    return directory / f"{_TEMP_PREFIX}{name}-{uuid.uuid4().hex}"


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where the kernel or filesystem cannot (NFS, non-Linux)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _install(new: Path, target: Path) -> None:
    """Rename the complete folder ``new`` to ``target``, replacing any checkpoint already there."""
    if not target.exists():
        os.rename(new, target)
        fsync_dir(target.parent)
        return
    if _exchange(new, target):
        old = new
    else:
        # Without an atomic swap, the old copy waits under a temporary name until the new one is in place;
        # a kill in between leaves both complete copies, but neither under the checkpoint's name.
        old = _temp_path(target.parent, target.name)
        os.rename(target, old)
        try:
            os.rename(new, target)
        except OSError:
            os.rename(old, target)
            raise
    fsync_dir(target.parent)
    shutil.rmtree(old)


def _remove_checkpoint(path: Path) -> None:
    hidden = _temp_path(path.parent, path.name)
    os.rename(path, hidden)
    fsync_dir(path.parent)
    shutil.rmtree(hidden)


def _remove_tree_or_file(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
