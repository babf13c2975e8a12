"""cifar.checkpoint: atomic checkpoints that survive kills and damage, and safetensors weight export."""

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from cifar import checkpoint
from cifar.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_name, latest_checkpoint,
                              list_checkpoints, load_checkpoint, load_weights, numpy_rng_state, plain_state_dict,
                              prune_checkpoints, read_manifest, save_weights, set_numpy_rng_state,
                              verify_checkpoint, write_checkpoint)
from cifar.schedulers import build_schedule

ROOT = Path(__file__).resolve().parents[1]


def assert_same(actual, expected, where="payload"):
    """Deep equality that compares tensors exactly (values, dtype, shape) and keeps tuples apart from lists."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.device.type == "cpu", where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


def small_payload(tag: int = 0) -> dict:
    return {"model": {"weight": torch.full((4,), float(tag))}, "trainer": {"tag": tag}}


def write_steps(directory: Path, steps) -> dict[int, Path]:
    return {step: write_checkpoint(directory, step, small_payload(step), {"step": step}) for step in steps}


def test_realistic_training_state_round_trips(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = build_schedule("onecycle", sgd, total_steps=10)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    sgd.step()
    adamw.step()
    schedule.step()
    random.seed(1)
    np.random.seed(2)
    payloads = {
        "model": model.state_dict(),
        "optimizer": sgd.state_dict(),
        "adamw": adamw.state_dict(),
        "scheduler": schedule.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_rng_state()},
    }
    expected = (random.random(), np.random.random(), torch.rand(1).item())  # what the saved states draw next
    meta = {"epoch": 3, "net": "tiny", "best_acc": 0.5, "args": {"lr": 0.1, "nesterov": False}}
    path = write_checkpoint(tmp_path / "ckpt", 7, payloads, meta)

    assert path == tmp_path / "ckpt" / "step-000000007"
    manifest = read_manifest(path)
    assert (manifest["format"], manifest["step"], manifest["meta"]) == (CHECKPOINT_FORMAT, 7, meta)
    assert sorted(manifest["files"]) == sorted(f"{stem}.pt" for stem in payloads)
    loaded = load_checkpoint(path)
    assert_same(loaded, payloads)

    # The loaded states drive fresh objects exactly as the originals would.
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fresh.load_state_dict(loaded["model"], strict=True)
    fresh_sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_sgd.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh_sgd.state[fresh_sgd.param_groups[0]["params"][0]]["momentum_buffer"],
                       sgd.state[model[0].weight]["momentum_buffer"])
    random.setstate(loaded["rng"]["python"])
    set_numpy_rng_state(loaded["rng"]["numpy"])
    torch.set_rng_state(loaded["rng"]["torch"])
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_numpy_rng_state_is_plain_and_restores_the_stream():
    np.random.seed(123)
    np.random.standard_normal()  # leaves a cached gaussian, part of the legacy state
    state = numpy_rng_state()
    assert json.loads(json.dumps(state)) == state  # plain values only
    expected = np.random.standard_normal(5)
    np.random.seed(0)
    set_numpy_rng_state(state)
    assert np.array_equal(np.random.standard_normal(5), expected)
    with pytest.raises(ValueError, match="lacks 'pos'.*numpy_rng_state"):
        set_numpy_rng_state({key: value for key, value in state.items() if key != "pos"})


@pytest.mark.parametrize("payloads, meta, error, match", [
    ({"rng": np.random.get_state()}, {}, CheckpointError, r"'rng' would not load back with weights_only.*numpy"),
    ({"../evil": 1}, {}, ValueError, r"'\.\./evil' is not a plain file stem"),
    ({"model": 1}, {"when": object()}, ValueError, "JSON-serializable"),
])
def test_write_refuses_what_could_not_be_resumed_and_leaves_nothing(tmp_path, payloads, meta, error, match):
    with pytest.raises(error, match=match):
        write_checkpoint(tmp_path, 1, payloads, meta)
    assert list(tmp_path.iterdir()) == []


def test_names_sort_by_step_and_list_is_ascending(tmp_path):
    assert checkpoint_name(123) == "step-000000123"
    steps = [999_999_999, 5, 100, 20, 0]
    assert sorted(map(checkpoint_name, steps)) == [checkpoint_name(step) for step in sorted(steps)]
    for bad in (-1, 10**9, True, 1.0):
        with pytest.raises(ValueError, match="step must be an integer"):
            checkpoint_name(bad)
    write_steps(tmp_path, [10, 2, 100])
    assert list_checkpoints(tmp_path) == [tmp_path / checkpoint_name(step) for step in (2, 10, 100)]
    assert list_checkpoints(tmp_path / "absent") == []


@pytest.mark.parametrize("atomic_swap", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_rewriting_a_step_replaces_it_with_the_new_complete_copy(tmp_path, monkeypatch, atomic_swap):
    if not atomic_swap:
        monkeypatch.setattr(checkpoint, "_exchange", lambda new, target: False)
    write_checkpoint(tmp_path, 3, small_payload(1), {"copy": 1})
    path = write_checkpoint(tmp_path, 3, small_payload(2), {"copy": 2})
    assert list(tmp_path.iterdir()) == [path]  # one copy, no leftovers
    assert read_manifest(path)["meta"] == {"copy": 2}
    assert load_checkpoint(path)["trainer"] == {"tag": 2}


def test_temp_and_incomplete_folders_are_ignored_then_pruned(tmp_path):
    written = write_steps(tmp_path, [1, 2])
    temp = tmp_path / ".tmp-step-000000003-0123abcd"
    temp.mkdir()
    (temp / "model.pt").write_bytes(b"half a payload")
    incomplete = tmp_path / checkpoint_name(4)
    incomplete.mkdir()
    (incomplete / "model.pt").write_bytes(b"no manifest yet")
    unrelated = [tmp_path / "notes.txt", tmp_path / "step-5", tmp_path / "step-000000006.txt"]
    unrelated[0].write_text("keep me")
    unrelated[1].mkdir()
    unrelated[2].write_text("keep me")

    assert list_checkpoints(tmp_path) == [written[1], written[2]]
    latest, skipped = latest_checkpoint(tmp_path)
    assert latest == written[2]
    assert [path for path, _ in skipped] == [incomplete]
    assert "incomplete (no manifest.json" in skipped[0][1] and str(incomplete) in skipped[0][1]
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(incomplete)

    assert sorted(prune_checkpoints(tmp_path, keep_last=5)) == sorted([temp, incomplete])
    assert sorted(tmp_path.iterdir()) == sorted([written[1], written[2], *unrelated])


def flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-7])


@pytest.mark.parametrize("damage, problem", [
    (flip_byte, "has sha256"), (truncate, "bytes, the manifest says"), (Path.unlink, "is missing"),
])
def test_damaged_newest_checkpoint_is_skipped_with_the_reason(tmp_path, damage, problem):
    written = write_steps(tmp_path, [1, 2])
    damage(written[2] / "trainer.pt")

    latest, skipped = latest_checkpoint(tmp_path)
    assert latest == written[1]
    assert len(skipped) == 1 and skipped[0][0] == written[2]
    reason = skipped[0][1]
    assert "corrupt: trainer.pt" in reason and problem in reason and str(written[2]) in reason
    with pytest.raises(CheckpointError, match="corrupt: trainer.pt"):
        load_checkpoint(written[2])
    assert load_checkpoint(latest)["trainer"] == {"tag": 1}


def rewrite_manifest(path: Path, **changes) -> None:
    manifest = read_manifest(path)
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_unknown_format_is_refused_with_found_and_supported_versions(tmp_path):
    written = write_steps(tmp_path, [1, 2])
    rewrite_manifest(written[2], format=99)
    with pytest.raises(CheckpointError, match=rf"format 99, this code reads format {CHECKPOINT_FORMAT}"):
        verify_checkpoint(written[2])
    latest, skipped = latest_checkpoint(tmp_path)
    assert latest == written[1] and [path for path, _ in skipped] == [written[2]]


def test_manifest_cannot_point_outside_the_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "ckpt", 1, small_payload(), {})
    (tmp_path / "outside.pt").write_bytes(b"x")
    record = {"bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    rewrite_manifest(path, files={"../outside.pt": record})
    with pytest.raises(CheckpointError, match="no valid 'files' table"):
        load_checkpoint(path)


def test_prune_keeps_the_newest_complete_ones_and_those_asked_for(tmp_path):
    written = write_steps(tmp_path, range(1, 7))
    assert prune_checkpoints(tmp_path, keep_last=2, keep=[written[1]]) == [written[2], written[3], written[4]]
    assert list_checkpoints(tmp_path) == [written[1], written[5], written[6]]

    # A damaged newest checkpoint does not count, so it cannot push out the last good one.
    flip_byte(written[6] / "model.pt")
    assert prune_checkpoints(tmp_path, keep_last=1) == [written[1], written[6]]
    assert list_checkpoints(tmp_path) == [written[5]]
    assert prune_checkpoints(tmp_path, keep_last=0, keep=[written[5]]) == []
    with pytest.raises(ValueError, match="keep_last must be an integer >= 0"):
        prune_checkpoints(tmp_path, keep_last=-1)


class RunsCommand:
    """Unpickling this runs a shell command: what a tampered checkpoint could carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_payload_that_would_run_code_is_refused_and_not_run(tmp_path):
    path = write_checkpoint(tmp_path, 1, small_payload(), {})
    marker = tmp_path / "ran"
    evil = pickle.dumps(RunsCommand(f"touch {shlex.quote(str(marker))}"), protocol=2)
    (path / "trainer.pt").write_bytes(evil)
    files = read_manifest(path)["files"]
    files["trainer.pt"] = {"bytes": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
    rewrite_manifest(path, files=files)
    verify_checkpoint(path)  # the checksums match: only loading can catch it

    with pytest.raises(CheckpointError, match=re.escape(str(path / "trainer.pt"))):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(evil)  # proof that the file is live: plain unpickling runs it
    assert marker.exists()


CRASH_WRITER = """
import os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # no thread pool before fork
from cifar.checkpoint import prune_checkpoints, write_checkpoint
directory = Path(sys.argv[1])
big = [torch.randn(1_500_000, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
print("ready", flush=True)
while line := sys.stdin.readline():
    step = int(line)
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                payloads = {"model": {"tag": torch.tensor(step), "weight": big[0]}, "optimizer": {"m": big[1]},
                            "extra": [big[2], step]}
                write_checkpoint(directory, step, payloads, {"step": step})
                print("wrote", step, flush=True)
                prune_checkpoints(directory, keep_last=2)
                step += 1
        finally:
            os._exit(1)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_never_exposes_a_half_written_checkpoint(tmp_path, kill_rounds):
    """One interpreter imports torch once, then forks a writer per round that loops write + prune (each
    round starting by rewriting the latest step, as a resumed run does) until SIGKILLed at a seeded random delay
    after its first finished checkpoint, so that every round gets somewhere however slow the machine."""
    directory = tmp_path / "ckpt"
    big = [torch.randn(1_500_000, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(directory)], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    previous_step, rounds_with_debris, writer = 1, 0, None
    try:
        assert server.stdout.readline() == "ready\n"
        for _ in range(5):
            server.stdin.write(f"{previous_step}\n")
            server.stdin.flush()
            writer = int(server.stdout.readline())
            first = server.stdout.readline()
            assert first.startswith("wrote "), f"the writer stopped before its first checkpoint: {first!r}"
            time.sleep(kill_rounds.delay(0.6))
            os.kill(writer, signal.SIGKILL)
            while (line := server.stdout.readline()).startswith("wrote "):
                pass
            writer = None  # reaped by the server
            kill_rounds.assert_killed(int(line), saved=True)  # killed while writing, not stopped by an error

            names = sorted(entry.name for entry in directory.iterdir())
            rounds_with_debris += any(name.startswith(".tmp-") for name in names)
            named = [directory / name for name in names if re.fullmatch(r"step-\d{9}", name)]
            for path in named:
                verify_checkpoint(path)  # anything under a checkpoint name is complete
            latest, skipped = latest_checkpoint(directory)
            assert skipped == []
            assert latest is not None
            step = read_manifest(latest)["step"]
            assert latest.name == checkpoint_name(step) and step >= previous_step  # never behind the last round
            loaded = load_checkpoint(latest)
            assert loaded["model"]["tag"].item() == step and loaded["extra"][1] == step
            assert torch.equal(loaded["model"]["weight"], big[0]) and torch.equal(loaded["extra"][0], big[2])
            previous_step = step
    finally:
        if writer is not None:  # a failed round must not leave the writer looping
            with contextlib.suppress(ProcessLookupError):
                os.kill(writer, signal.SIGKILL)
        server.kill()
        server.communicate()
    assert rounds_with_debris, "no kill landed mid-write, so the rounds proved nothing"
    prune_checkpoints(directory, keep_last=1)
    assert [entry.name for entry in directory.iterdir()] == [checkpoint_name(previous_step)]


class DDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class CompiledLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


class Holder(nn.Module):
    """A real submodule called ``module``, deeper than the wrappers: its name must survive."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(3, 2)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.holder = Holder()
        self.head = nn.Linear(3, 2)
        self.head.weight = self.holder.module.weight  # tied: safetensors refuses shared storage


@pytest.mark.parametrize("wrap", [
    lambda net: net, DDPLike, CompiledLike, lambda net: CompiledLike(DDPLike(net)),
    lambda net: DDPLike(CompiledLike(net)),
], ids=["plain", "ddp", "compile", "compile-ddp", "ddp-compile"])
def test_plain_state_dict_strips_wrappers_and_loads_strictly(wrap, tmp_path):
    net = Net()
    plain = plain_state_dict(wrap(net))
    assert list(plain) == list(net.state_dict())
    assert "holder.module.weight" in plain
    for key, value in net.state_dict().items():
        copy = plain[key]
        assert torch.equal(copy, value) and copy.is_contiguous() and not copy.requires_grad
        assert copy.untyped_storage().data_ptr() != value.untyped_storage().data_ptr()
    fresh = Net()
    fresh.load_state_dict(plain, strict=True)
    assert torch.equal(fresh.conv.weight, net.conv.weight)
    save_weights(plain, tmp_path / "w.safetensors", {})  # would raise on the tied weights without the copy


def test_save_and_load_weights_round_trip_with_metadata(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.ones(2, dtype=torch.float16)}
    path = tmp_path / "out" / "net.safetensors"
    assert save_weights(state, path, {"net": "c4net", "epoch": "3"}) == path
    save_weights({**state, "a": state["a"] * 2}, path, {"net": "c4net", "epoch": "4"})  # replaces
    assert [entry.name for entry in path.parent.iterdir()] == ["net.safetensors"]  # no temp file left
    tensors, metadata = load_weights(path)
    assert_same(tensors, {"a": state["a"] * 2, "b": state["b"], "c": state["c"]})
    assert metadata == {"net": "c4net", "epoch": "4"}
    assert safetensors.torch.load_file(path).keys() == state.keys()  # readable by plain safetensors too
    with pytest.raises(ValueError, match="str to str"):
        save_weights(state, path, {"epoch": 4})


def test_load_weights_reads_a_checkpoint_folder(tmp_path):
    net = Net()
    meta = {"net": "net", "epoch": 3, "best_acc": 0.5, "flags": {"ema": False}}
    path = write_checkpoint(tmp_path, 3, {"model": plain_state_dict(net), "optimizer": {}}, meta)
    tensors, metadata = load_weights(path)
    assert_same(tensors, plain_state_dict(net))
    assert metadata == {"net": "net", "epoch": "3", "best_acc": "0.5", "flags": '{"ema": false}'}


def missing(tmp_path):
    return tmp_path / "nope.safetensors"


def text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not tensors\n")
    return path


def random_folder(tmp_path):
    path = tmp_path / "folder"
    path.mkdir()
    (path / "model.pt").write_bytes(b"x")
    return path


def truncated(tmp_path):
    path = save_weights({"a": torch.randn(100)}, tmp_path / "w.safetensors", {})
    path.write_bytes(path.read_bytes()[:-40])
    return path


def checkpoint_without_model(tmp_path):
    return write_checkpoint(tmp_path, 1, {"optimizer": {}}, {})


@pytest.mark.parametrize("make, problem", [
    (missing, "does not exist"), (text_file, "not a readable safetensors file"),
    (random_folder, "not a checkpoint"), (truncated, "not a readable safetensors file"),
    (checkpoint_without_model, "no 'model' payload"),
])
def test_load_weights_names_the_path_and_the_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_weights(path)
    assert str(path) in str(error.value) and problem in str(error.value)


@pytest.mark.slow
def test_equal_weights_give_equal_files_in_every_process(tmp_path: Path) -> None:
    # safetensors orders metadata by a per-process hash: without sorting, two processes write different bytes.
    script = ("import sys, torch; from pathlib import Path; from cifar.checkpoint import save_weights; "
              "save_weights({'w': torch.arange(6.0)}, Path(sys.argv[1]), "
              "{k: k * 2 for k in ('model', 'mean', 'std', 'classes', 'extra', 'é')})")
    root = Path(__file__).resolve().parents[1]
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in files:
        subprocess.run([sys.executable, "-c", script, str(path)], cwd=root, check=True)
    assert len({path.read_bytes() for path in files}) == 1
    weights, metadata = load_weights(files[0])
    assert metadata["é"] == "éé" and torch.equal(weights["w"], torch.arange(6.0))
