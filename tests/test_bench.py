"""bench.py end to end on the tiny dataset: every measurement present, the ratio the ratio of the two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import with_native_convs
from cifar.nets import build_net
from cifar.nets.dilated import Conv2d as DilatedPathConv
from tests.tiny_data import write_tiny_cifar

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_bench_reports_every_measurement(tmp_path: Path) -> None:
    data = write_tiny_cifar(tmp_path / "tiny")
    done = bench("--data-dir", data, "--model", "c4net_tiny", "--batch-size", "32", "--cpu", "--steps", "2",
                 "--warmup", "1", "--train-images", "200", "--processes", "2", "--json", tmp_path / "bench.json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "bench.json").read_text())
    for key in ("data_images_per_second", "model_images_per_second", "trainer_images_per_second",
                "baseline_images_per_second", "model_peak_memory_mb", "trainer_peak_memory_mb"):
        assert result[key] > 0, key
    assert result["trainer_vs_baseline"] == pytest.approx(
        result["trainer_images_per_second"] / result["baseline_images_per_second"])
    assert result["seconds_per_epoch"] == pytest.approx(50_000 / result["trainer_images_per_second"])
    assert result["trainer_train_images"] == 200 and result["model"] == "c4net_tiny" and result["processes"] == 2
    for line in ("data pipeline", "model only", "trainer (train.py)", "seed-style baseline", "trainer / baseline"):
        assert line in done.stdout


def test_bench_times_another_commits_trainer(tmp_path: Path) -> None:
    data = write_tiny_cifar(tmp_path / "tiny")
    done = bench("--data-dir", data, "--model", "c4net_tiny", "--batch-size", "32", "--cpu", "--train-images", "200",
                 "--skip", "data", "model", "baseline", "--baseline-ref", "HEAD")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["baseline_ref"] == "HEAD" and result["ref_trainer_images_per_second"] > 0
    assert result["trainer_vs_ref"] == pytest.approx(
        result["trainer_images_per_second"] / result["ref_trainer_images_per_second"])
    assert "trainer at HEAD" in done.stdout


def test_bench_bad_input_names_the_fix(tmp_path: Path) -> None:
    done = bench("--data-dir", tmp_path / "nothing", "--cpu")
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    data = write_tiny_cifar(tmp_path / "tiny")
    done = bench("--data-dir", data, "--cpu", "--steps", "100", "--batch-size", "32")
    assert done.returncode == 2 and "lower --steps or --batch-size" in done.stderr
    done = bench("--data-dir", data, "--cpu", "--skip", "data", "model", "trainer", "baseline",
                 "--baseline-ref", "no-such-commit")
    assert done.returncode != 0 and "--baseline-ref 'no-such-commit'" in done.stderr


@pytest.mark.parametrize("name", ["c4net", "seed003"])
def test_the_baseline_runs_the_net_with_plain_convs_and_the_same_function(name: str) -> None:
    """The seed-style loop must not get this project's dilated-conv CPU path: plain nn.Conv2d, same outputs."""
    torch.manual_seed(0)
    ours = build_net(name)
    plain = with_native_convs(build_net(name))
    plain.load_state_dict(ours.state_dict())
    assert any(isinstance(m, DilatedPathConv) for m in ours.modules())
    assert not any(isinstance(m, DilatedPathConv) for m in plain.modules())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(ours.eval()(x), plain.eval()(x))
