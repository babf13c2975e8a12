"""The c4next family (cifar/nets/c4next.py) and its patch-whitening stem (cifar/nets/whitening.py)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cifar.nets import build_net, list_nets
from cifar.nets.analysis import CONSTRAINTS, analyze_net
from cifar.nets.c4next import (C4NEXT_SPECS, TINY_C4NEXT, Branch, C4NextSpec, NextStageSpec, SpatialMixer,
                               c4next_from_spec)
from cifar.nets.whitening import PatchWhitening, fit_patch_whitening, patch_covariance, patch_whitening_filters
from cifar.optim import param_groups
from tests.test_train import (BASE, ROOT, assert_resumed, assert_same_run, command, newest_step,
                              sigterm_after_a_checkpoint, tiny, train)  # noqa: F401 (tiny: the fixture)

C4NEXT_NETS = [name for name in list_nets() if name.startswith("c4next")]
STAGES = C4NEXT_SPECS["c4next_m"].stages


@pytest.mark.parametrize("name", C4NEXT_NETS)
def test_every_c4next_net_meets_every_constraint(name: str) -> None:
    report = analyze_net(build_net(name), name=name)
    assert report.constraints == {c: True for c in CONSTRAINTS}, report.constraints


@pytest.mark.parametrize("change, quoted", [
    ({"block": "resnet"}, ["'resnet'", "metaformer, inverted"]),
    ({"norm": "instance"}, ["'instance'", "batch, layer"]),
    ({"activation": "tanh"}, ["'tanh'", "relu, gelu, silu"]),
    ({"stem": "patchify"}, ["'patchify'", "conv, whiten"]),
    ({"block": "inverted", "gated": True}, ["gated True", "inverted"]),
    ({"layer_scale": 0.0}, ["layer_scale 0.0", "positive"]),
])
def test_a_bad_spec_names_the_value_and_what_is_allowed(change: dict, quoted: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        C4NextSpec(STAGES, **change)
    assert all(text in str(error.value) for text in quoted), str(error.value)


@pytest.mark.parametrize("make, quoted", [
    (lambda: Branch(kernel_size=4), "kernel_size 4"),
    (lambda: Branch(kernel_size=0, dilation=2), "identity"),
    (lambda: NextStageSpec(32, 1, stride=3), "stride 3"),
    (lambda: NextStageSpec(32, 1, branches=(Branch(0),)), "at least one depthwise branch"),
    (lambda: C4NextSpec(STAGES[:3]), "stages 3"),
    (lambda: C4NextSpec((NextStageSpec(32, 1, stride=2), *STAGES[1:])), "C1's stride 2"),
])
def test_bad_stages_and_branches_are_refused(make, quoted: str) -> None:
    with pytest.raises(ValueError, match=quoted):
        make()


def test_the_mixer_splits_channels_in_order_and_passes_the_identity_share_through() -> None:
    mixer = SpatialMixer(10, (Branch(0), Branch(3), Branch(5, dilation=2, pool=True)))
    assert mixer.shares == [4, 3, 3]
    x = torch.randn(2, 10, 8, 8)
    out = mixer(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, :4], x[:, :4])
    assert torch.allclose(out[:, 4:7], mixer.branches[1](x[:, 4:7]))
    assert not torch.allclose(out[:, 4:], x[:, 4:])


@pytest.mark.parametrize("block", ["metaformer", "inverted"])
def test_both_block_orders_train_and_keep_the_stage_shapes(block: str) -> None:
    spec = replace(C4NEXT_SPECS["c4next_m"], block=block, gated=False).scaled(8)
    net = c4next_from_spec(spec, num_classes=3)
    assert net.features[0](torch.randn(2, 3, 32, 32)).shape == (2, spec.stages[0].width, 32, 32)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


# ---------------------------------------------------------------- patch whitening


def correlated_images(n: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, C) images whose neighbouring pixels and channels are strongly correlated, as photos are."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (n, 18, 18, 1)).repeat(2, 1).repeat(2, 2)[:, :32, :32]
    colour = base * np.array([1.0, 0.8, 0.6]) + rng.normal(0, 0.3, (n, 32, 32, 3))
    return np.clip(128 + 40 * colour, 0, 255).astype(np.uint8)


def test_patch_covariance_is_that_of_the_normalised_patches() -> None:
    images = correlated_images(5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (images.astype(np.float64) / 255 - mean) / std
    patches = np.stack([x[:, i:i + 3, j:j + 3].transpose(0, 3, 1, 2).reshape(len(x), -1)
                        for i in range(30) for j in range(30)], 1).reshape(-1, 27)
    got = patch_covariance(images, mean, std, chunk=2).numpy()
    assert np.allclose(got, np.cov(patches.T, bias=True), atol=1e-10)


def test_whitening_filters_decorrelate_the_patches_they_were_fitted_on() -> None:
    images = correlated_images()
    covariance = patch_covariance(images, (0.5,) * 3, (0.2,) * 3)
    filters = patch_whitening_filters(covariance, 3, eps=1e-9).double()
    assert filters.shape == (54, 3, 3, 3)
    assert torch.equal(filters[27:], -filters[:27])
    # The filters applied to the patches: their covariance is the identity (it was far from it before).
    flat = filters[:27].reshape(27, 27)
    whitened = flat @ covariance @ flat.T
    assert torch.allclose(whitened, torch.eye(27, dtype=torch.float64), atol=1e-5)
    assert (covariance - torch.diag(covariance.diag())).abs().max() > 0.25


def test_fitting_sets_only_the_whitening_layers_and_depends_only_on_the_images() -> None:
    images, mean, std = correlated_images(), (0.5,) * 3, (0.2,) * 3
    plain = build_net("c4net_tiny")
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert fit_patch_whitening(plain, images, mean, std) == 0
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())

    torch.manual_seed(0)
    first = build_net(TINY_C4NEXT)
    torch.manual_seed(1)
    second = build_net(TINY_C4NEXT)
    identity = next(m for m in first.modules() if isinstance(m, PatchWhitening)).weight.clone()
    assert fit_patch_whitening(first, images, mean, std) == 1
    assert fit_patch_whitening(second, images, mean, std) == 1
    fitted = [next(m for m in net.modules() if isinstance(m, PatchWhitening)).weight for net in (first, second)]
    assert torch.equal(fitted[0], fitted[1]) and not torch.equal(fitted[0], identity)
    # Part of the state dict (so checkpoints carry it), never of what the optimizer steps.
    assert any(torch.equal(v, fitted[0]) for v in first.state_dict().values())
    stepped = {id(p) for group in param_groups(first, 5e-4) for p in group["params"]}
    assert id(fitted[0]) not in stepped and not fitted[0].requires_grad


def test_an_unfitted_whitening_stem_passes_each_pixel_of_the_patch_with_both_signs() -> None:
    layer = PatchWhitening()
    x = torch.randn(1, 3, 5, 5)
    out = layer(x)
    assert out.shape == (1, 54, 5, 5)
    # Output 13 is the centre tap (index 4) of channel 1 (1·9 + 4); output 27 + 13 is its negation.
    assert torch.equal(out[0, 13], x[0, 1]) and torch.equal(out[0, 27 + 13], -x[0, 1])


# ---------------------------------------------------------------- in train.py


@pytest.mark.slow
def test_a_whitening_run_resumes_exactly_and_evaluates_with_the_filters_it_trained(tiny: Path,  # noqa: F811
                                                                                    tmp_path: Path) -> None:
    """The fitted filters travel in the checkpoint and the weights: a resume continues with them bit for bit, and
    --eval-only reproduces the run's test accuracy from model.safetensors alone."""
    args = [*BASE, "--model", TINY_C4NEXT, "--data-dir", tiny, "--epochs", "2", "--mixed-precision", "no"]
    reference = tmp_path / "straight"
    result = train(*args, "--output-dir", reference)
    assert result.returncode == 0, result.stderr
    stem = load_file(reference / "model.safetensors")["features.0.0.0.weight"]
    assert stem.shape == (54, 3, 3, 3) and not torch.equal(stem, PatchWhitening().weight.data)

    out = tmp_path / "run"
    cmd = command(*args, "--output-dir", out, "--resume", "auto")
    sigterm_after_a_checkpoint(cmd, out)
    step = newest_step(out)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_resumed(result.stdout, step)
    assert_same_run(reference, out)

    summary = json.loads((reference / "summary.json").read_text())
    result = train("--cpu", "--data-dir", tiny, "--eval-only", reference / "model.safetensors", "--num-workers", "0")
    assert result.returncode == 0, result.stderr
    assert f"test accuracy {summary['test_acc']:.2%} (100 images)" in result.stdout
