"""The bit-exactness fingerprint train.py records, and how cifar.replay keys its verdict to it: under the run's
fingerprint other bits are a finding (REPLAY DIFFERS), under another one the replay is numerical and alleges
nothing (REPLAY AGREES NUMERICALLY / REPLAY UNCONFIRMED).

The fast tests parse the libraries' log lines and judge comparisons of weights written here; the slow ones probe
this machine's libraries in subprocesses and replay a 2-epoch run of the tiny net trained with train.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar import checkpoint as ckpt
from cifar import results
from cifar.hardware import (FINGERPRINT_FIELDS, bitwise_fingerprint, cpu_model, fingerprint_differences,
                            parse_library_isas)
from cifar.replay import (EXIT_AGREES_NUMERICALLY, EXIT_DIFFERS, EXIT_MATCHES, EXIT_UNCONFIRMED, compare_weights,
                          plan_replay, replay_differences, verdict)
from tests.test_results import make_run

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")

# The logs' first lines, as oneDNN v3.12 and oneMKL 2024.2 (torch 2.14.1) wrote them on a Xeon with AMX, and as
# MKL_ENABLE_INSTRUCTIONS=AVX2 made MKL write its own; the oneDNN line of an AMD Zen 4 is quoted in issue 28.
AMX_LOG = """\
onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,info,cpu,runtime:OpenMP,nthr:1
onednn_verbose,v1,info,cpu,isa:Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support
onednn_verbose,v1,info,gpu,runtime:none
MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Advanced Vector \
Extensions 512 (Intel(R) AVX-512) with support for INT8, BF16, FP16 (limited) instructions, and Intel(R) Advanced \
Matrix Extensions (Intel(R) AMX) with INT8 and BF16, Lnx 2.10GHz lp64 gnu_thread
MKL_VERBOSE SGEMM(T,N,10,16,64,0x7ffd74ccdfe0,0x559150fadc00,64,0x559150f82ec0,64,0x7ffd74cce000,0x5591,10) 68.79us
"""
OTHER_LOG = """\
dnnl_verbose,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support
MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Advanced Vector \
Extensions 2 (Intel(R) AVX2) enabled processors, Lnx 3.70GHz lp64 gnu_thread
"""
XEON = {"onednn_isa": "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support",
        "mkl_isa": "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) with AMX", "cpu_capability": "AVX512",
        "cpu": "Intel(R) Xeon(R) Processor (vendor GenuineIntel family 6 model 207 stepping 2)",
        "torch": "2.14.1+cu130 (git 5c4886908584)", "processes": 1, "threads": 1}
ZEN4 = {**XEON, "onednn_isa": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
        "cpu": "AMD EPYC 9654 96-Core Processor (vendor AuthenticAMD family 25 model 17 stepping 1)"}


# ---------------------------------------------------------------- what the fingerprint holds


def test_the_libraries_log_lines_give_their_instruction_sets() -> None:
    assert parse_library_isas(AMX_LOG) == (
        "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support",
        "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) with support for INT8, BF16, FP16 (limited) "
        "instructions, and Intel(R) Advanced Matrix Extensions (Intel(R) AMX) with INT8 and BF16")
    assert parse_library_isas(OTHER_LOG) == (  # older oneDNN's prefix; the clock is left out
        "Intel AVX-512 with Intel DL Boost and bfloat16 support",
        "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled processors")
    assert parse_library_isas("onednn_verbose,v1,primitive,exec,cpu,convolution,...\n") == (None, None)


def test_the_cpu_model_keeps_the_numbers_a_virtual_machine_shows(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
                   "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 2\nflags\t\t: fpu avx512f\n\n"
                   "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert cpu_model(x86) == "Intel(R) Xeon(R) Processor (vendor GenuineIntel family 6 model 207 stepping 2)"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU variant\t: 0x1\n"
                   "CPU part\t: 0xd0c\nCPU revision\t: 1\n")
    assert cpu_model(arm) == f"{platform.machine()} (implementer 0x41 part 0xd0c variant 0x1 revision 1)"
    assert cpu_model(tmp_path / "absent")  # not Linux: what platform says


def test_fingerprints_differ_by_each_field_and_by_what_either_side_does_not_know() -> None:
    assert fingerprint_differences(XEON, dict(XEON)) == []
    assert fingerprint_differences(XEON, ZEN4) == [
        f"oneDNN's instruction set {XEON['onednn_isa']} there, {ZEN4['onednn_isa']} here",
        f"CPU {XEON['cpu']} there, {ZEN4['cpu']} here"]
    for key, label in FINGERPRINT_FIELDS.items():
        assert fingerprint_differences(XEON, {**XEON, key: "other"}) == [f"{label} {XEON[key]} there, other here"]
    # A probe that could not tell proves no equality, not even with another that could not either.
    unknown = {**XEON, "mkl_isa": None}
    assert fingerprint_differences(unknown, unknown) == ["MKL's instruction set not known there"]
    assert fingerprint_differences(XEON, {key: XEON[key] for key in XEON if key != "threads"}) == [
        "threads per process not known here"]
    assert fingerprint_differences(None, XEON) == ["the run records no fingerprint: an older train.py trained it"]


def test_replay_reads_the_fingerprints_of_the_run_and_of_its_last_epoch_start(tmp_path: Path) -> None:
    recorded = tmp_path / "recorded"
    results.ship_run(make_run(tmp_path / "run-1", fingerprint=XEON), recorded)
    manifest = json.loads((recorded / "last_epoch_start" / ckpt.MANIFEST).read_text())
    manifest["meta"]["fingerprint"] = XEON  # the meta is outside the checksums, as train.py writes it
    (recorded / "last_epoch_start" / ckpt.MANIFEST).write_text(json.dumps(manifest))
    plan = plan_replay(recorded)
    assert plan.fingerprint == plan.start_fingerprint == XEON
    assert replay_differences(plan, XEON) == []
    assert replay_differences(plan, ZEN4) == fingerprint_differences(XEON, ZEN4) != []
    # The last epoch began elsewhere (the run was continued with --resume during it): no single replay repeats it.
    moved = tmp_path / "moved"
    results.ship_run(make_run(tmp_path / "run-2", fingerprint=XEON), moved)
    assert replay_differences(plan_replay(moved), XEON) == [
        "the run's last epoch began under another fingerprint than it ended under"]
    # The shipped runs of an older train.py record none; they replay, numerically.
    older = tmp_path / "older"
    results.ship_run(make_run(tmp_path / "run-3"), older)
    assert plan_replay(older).fingerprint is None
    assert replay_differences(plan_replay(older), XEON) == fingerprint_differences(None, XEON)


# ---------------------------------------------------------------- the verdict, by fingerprint


@pytest.fixture
def weights(tmp_path: Path) -> dict[str, Path]:
    """Shipped weights, a bit-for-bit copy, a copy with one flipped bit, one with small differences in most
    values (another CPU's rounding), and one with a tensor missing."""
    torch.manual_seed(0)
    state = {"features.0.weight": torch.randn(8, 3, 3, 3), "features.1.running_var": torch.rand(24) + 0.5,
             "classifier.weight": torch.randn(10, 8)}
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("shipped", "copy", "flipped", "rounded", "short")}
    ckpt.save_weights(state, paths["shipped"], {})
    ckpt.save_weights(state, paths["copy"], {})
    flipped = {key: value.clone() for key, value in state.items()}
    flipped["classifier.weight"].view(-1).view(torch.int32)[3] ^= 1
    ckpt.save_weights(flipped, paths["flipped"], {})
    ckpt.save_weights({key: value + 6.75e-05 * torch.rand_like(value) for key, value in state.items()},
                      paths["rounded"], {})
    ckpt.save_weights({key: value for key, value in state.items() if key != "features.0.weight"}, paths["short"], {})
    return paths


def judge(weights: dict[str, Path], replayed: str, differences: list[str], replayed_acc: float = 0.8746,
          shipped_acc: float = 0.8746) -> tuple[int, str]:
    return verdict(compare_weights(weights["shipped"], weights[replayed]), differences, replayed_acc, shipped_acc,
                   weights["shipped"])


def test_equal_fingerprints_hold_the_replay_to_every_bit(weights: dict[str, Path]) -> None:
    code, line = judge(weights, "copy", [])
    assert code == EXIT_MATCHES and line.startswith("REPLAY MATCHES: all 3 tensors")
    assert "under the run's fingerprint" in line
    # One flipped bit, the test accuracy unchanged: under the run's own fingerprint that is a finding.
    code, line = judge(weights, "flipped", [])
    assert code == EXIT_DIFFERS
    assert line.startswith("REPLAY DIFFERS: 1 of 3 tensors differ") and "(in classifier.weight)" in line
    assert "not what this code trains" in line
    code, line = judge(weights, "rounded", [])
    assert code == EXIT_DIFFERS and line.startswith("REPLAY DIFFERS: 3 of 3 tensors differ")


def test_other_fingerprints_make_the_replay_numerical_and_allege_nothing(weights: dict[str, Path]) -> None:
    zen4 = fingerprint_differences(XEON, ZEN4)
    code, line = judge(weights, "rounded", zen4)  # what the Zen 4 of issue 28 met
    assert code == EXIT_AGREES_NUMERICALLY
    assert line.startswith("REPLAY AGREES NUMERICALLY: 3 of 3 tensors differ, by up to 6.7")
    assert "test accuracy 87.46% replayed, 87.46% shipped" in line and zen4[0] in line
    assert "say nothing against the shipped result" in line and "not what this code trains" not in line
    # The test accuracy differs too: not confirmed, still no allegation.
    code, line = judge(weights, "rounded", zen4, replayed_acc=0.8731)
    assert code == EXIT_UNCONFIRMED and line.startswith("REPLAY UNCONFIRMED: 3 of 3 tensors differ")
    assert "replay under the run's fingerprint" in line and "not what this code trains" not in line
    # No rounding loses a tensor, but another torch build might: unconfirmed rather than agreeing.
    code, line = judge(weights, "short", zen4)
    assert code == EXIT_UNCONFIRMED and "1 of them missing" in line
    # Equal bits are equal bits, on any machine; an older run that records no fingerprint replays numerically.
    code, line = judge(weights, "copy", zen4)
    assert code == EXIT_MATCHES and "even under another fingerprint" in line
    code, line = judge(weights, "flipped", fingerprint_differences(None, XEON))
    assert code == EXIT_AGREES_NUMERICALLY and "records no fingerprint" in line


# ---------------------------------------------------------------- this machine, and train.py end to end (slow)


def probe(**env: str) -> dict[str, object]:
    """The fingerprint a fresh process records under ``env`` (the libraries read their limits once)."""
    code = "import json; from cifar.hardware import bitwise_fingerprint; print(json.dumps(bitwise_fingerprint(1, 1)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, check=True)
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS name x86 instruction sets")
def test_the_probe_sees_the_level_the_libraries_are_held_to() -> None:
    here = probe()
    assert None not in here.values(), here
    # Every x86-64 CPU this torch runs on reaches beyond SSE4.1 and SSE4.2: so held, the libraries say so. MKL
    # takes its limit on Intel CPUs only: on an AMD one it runs one code path whatever the limit (cifar.hardware).
    capped = probe(ONEDNN_MAX_CPU_ISA="SSE41", MKL_ENABLE_INSTRUCTIONS="SSE4_2")
    assert capped["onednn_isa"] == "Intel SSE4.1", capped
    expected = [f"oneDNN's instruction set {here['onednn_isa']} there, Intel SSE4.1 here"]
    if "vendor GenuineIntel" in str(here["cpu"]):
        assert "SSE4.2" in str(capped["mkl_isa"]), capped
        expected.append(f"MKL's instruction set {here['mkl_isa']} there, {capped['mkl_isa']} here")
    else:
        assert capped["mkl_isa"] == here["mkl_isa"], capped
    assert fingerprint_differences(here, capped) == expected


@pytest.mark.slow
def test_a_run_records_its_fingerprint_in_the_summary_and_every_checkpoint(finished: Path) -> None:
    recorded = results.read_summary(finished)["fingerprint"]
    assert recorded == bitwise_fingerprint(1, torch.get_num_threads())  # this machine, this environment
    assert recorded["cpu_capability"] == results.read_summary(finished)["cpu_capability"]  # kept for continuity
    checkpoints = ckpt.list_checkpoints(finished / "checkpoints")
    assert checkpoints and all(ckpt.read_manifest(path)["meta"]["fingerprint"] == recorded for path in checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize("recorded", ["zen4", "none"])
def test_a_replay_under_another_fingerprint_reports_numbers_not_an_altered_result(finished: Path, tmp_path: Path,
                                                                                 recorded: str) -> None:
    shipped = tmp_path / "results" / "tiny"
    results.ship_run(finished, shipped)
    summary = results.read_summary(shipped)
    if recorded == "zen4":  # as if a Zen 4 had trained it: its last epoch's start says so too
        summary["fingerprint"] = {**summary["fingerprint"], "onednn_isa": ZEN4["onednn_isa"], "cpu": ZEN4["cpu"]}
        manifest = json.loads((shipped / "last_epoch_start" / ckpt.MANIFEST).read_text())
        manifest["meta"]["fingerprint"] = summary["fingerprint"]
        (shipped / "last_epoch_start" / ckpt.MANIFEST).write_text(json.dumps(manifest))
    else:  # as an older train.py wrote it
        del summary["fingerprint"]
    (shipped / "summary.json").write_text(json.dumps(summary))
    weights, metadata = ckpt.load_weights(shipped / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1).view(torch.int32)[0] ^= 1  # a change no test accuracy shows
    ckpt.save_weights(weights, shipped / "model.safetensors", metadata)
    done = subprocess.run([sys.executable, "-m", "cifar.replay", str(shipped)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == EXIT_AGREES_NUMERICALLY, done.stdout + done.stderr
    *_, last = done.stdout.splitlines()
    assert last.startswith("REPLAY AGREES NUMERICALLY: 1 of") and f"(in {name})" in last
    assert "REPLAY DIFFERS" not in done.stdout and "not what this code trains" not in done.stdout
    assert "the replay will be numerical" in done.stdout
    assert (ZEN4["cpu"] if recorded == "zen4" else "records no fingerprint") in last
