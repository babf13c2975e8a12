"""cifar.export: ONNX models that onnxruntime (a real client) runs to PyTorch's predictions, fed as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cifar import checkpoint as ckpt
from cifar.data import CifarArrays, load_cifar
from cifar.export import METADATA_KEYS, ExportError, InputStats, export_onnx, main, onnx_model
from cifar.nets import build_net
from tests.tiny_data import evaluation_inputs, write_tiny_cifar

ROOT = Path(__file__).resolve().parents[1]
NETS = ("c4net_tiny", "seed003", "c4next_tiny")  # seed003: conv biases before BatchNorm, Dropout2d inside the trunk;
# c4next_tiny: the frozen whitening stem, the split mixer (pooled and dilated branches), layer scales, gated GELU
TIE = 1e-4  # predictions may differ only where PyTorch's top two logits are closer than this


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> CifarArrays:
    return load_cifar(write_tiny_cifar(tmp_path_factory.mktemp("data") / "tiny"))


def stats_of(data: CifarArrays) -> InputStats:
    return InputStats(data.mean, data.std, data.classes)


def net_with_real_batchnorm(name: str, data: CifarArrays) -> nn.Module:
    """A fresh net whose BatchNorm layers do something: random affine parameters and running statistics moved
    by a few training-mode passes over normalised training images."""
    torch.manual_seed(0)
    net = build_net(name)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.2)
    inputs = evaluation_inputs(data.train_images[:96], data)
    net.train()
    with torch.no_grad():
        for batch in inputs.split(32):
            net(batch)
    return net.eval()


def onnx_inputs(images: np.ndarray) -> np.ndarray:
    """The documented way to feed an exported model: uint8 NHWC RGB -> float32 NCHW in [0, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(model: ort.InferenceSession, images: np.ndarray, batch_size: int) -> np.ndarray:
    pixels = onnx_inputs(images)
    return np.concatenate([model.run(["logits"], {"pixels": pixels[i:i + batch_size]})[0]
                           for i in range(0, len(pixels), batch_size)])


def assert_same_predictions(logits: np.ndarray, reference: np.ndarray) -> None:
    top_two = np.sort(reference, axis=1)[:, -2:]
    decisive = top_two[:, 1] - top_two[:, 0] > TIE
    assert decisive.mean() > 0.9  # otherwise the comparison below says little
    assert (logits.argmax(1)[decisive] == reference.argmax(1)[decisive]).all()


@pytest.fixture(scope="module", params=NETS)
def exported(request: pytest.FixtureRequest, data: CifarArrays,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, nn.Module, Path]:
    name = request.param
    net = net_with_real_batchnorm(name, data)
    path = export_onnx(net, tmp_path_factory.mktemp("onnx") / f"{name}.onnx", name, stats_of(data))
    return name, net, path


# ---------------------------------------------------------------- the model


def test_onnxruntime_predicts_what_pytorch_predicts_at_any_batch_size(exported, data: CifarArrays) -> None:
    name, net, path = exported
    with torch.no_grad():
        reference = net(evaluation_inputs(data.test_images, data)).numpy()
    model = session(path)
    for batch_size in (len(data.test_images), 7):  # one batch of 100, then 14 of 7 and one of 2
        logits = run_onnx(model, data.test_images, batch_size)
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5, err_msg=f"{name}, batch {batch_size}")
        assert_same_predictions(logits, reference)


def test_the_graph_holds_inference_ops_only_and_a_dynamic_batch_axis(exported) -> None:
    name, _, path = exported
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert "Dropout" not in ops, ops
    # Every BatchNorm that follows a convolution is folded into it; one after a concatenation or a residual sum
    # (c4next's mixers, its last norm) stays, in inference mode.
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    norms = [node for node in model.graph.node if node.op_type == "BatchNormalization"]
    assert all(producers.get(node.input[0]) != "Conv" for node in norms), [node.name for node in norms]
    assert all(attribute.i == 0 for node in norms for attribute in node.attribute if attribute.name == "training_mode")
    assert bool(norms) == name.startswith("c4next"), ops  # in c4net and the seed nets every one follows a conv
    assert {"Conv", "Sub", "Div"} <= ops  # the normalisation is inside
    assert model.opset_import[0].version >= 17
    [pixels], [logits] = model.graph.input, model.graph.output
    assert [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim] == ["batch", 3, 32, 32]
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 10]


def test_the_metadata_says_how_to_feed_the_model(exported, data: CifarArrays) -> None:
    name, _, path = exported
    meta = session(path).get_modelmeta()
    props = meta.custom_metadata_map
    assert set(props) == set(METADATA_KEYS)
    assert props["net"] == name
    assert tuple(json.loads(props["classes"])) == data.classes
    assert tuple(json.loads(props["mean"])) == data.mean and tuple(json.loads(props["std"])) == data.std
    assert props["input_layout"] == "NCHW, RGB" and "/ 255" in props["input_range"]
    assert "inside the model" in props["normalization"] and "pixels" in meta.description


def test_class_names_must_match_the_nets_outputs(data: CifarArrays) -> None:
    with pytest.raises(ExportError, match="10 outputs but 3 class names"):
        onnx_model(build_net("c4net_tiny"), "c4net_tiny", InputStats(data.mean, data.std, ("a", "b", "c")))
    with pytest.raises(ExportError, match="stds > 0"):
        onnx_model(build_net("c4net_tiny"), "c4net_tiny", InputStats(data.mean, (0.2, 0.0, 0.2), data.classes))


# ---------------------------------------------------------------- the command line, in process


def save(net: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
    return ckpt.save_weights(ckpt.plain_state_dict(net), path, metadata)


def test_weights_without_input_statistics_take_them_from_data_dir(data: CifarArrays, tmp_path: Path, capsys) -> None:
    weights = save(build_net("c4net_tiny"), tmp_path / "old.safetensors", {"model": "c4net_tiny"})
    target = tmp_path / "old.onnx"
    assert main([str(weights), "--onnx", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "old.safetensors" in error and "--data-dir" in error
    assert not target.exists()
    assert main([str(weights), "--onnx", str(target), "--data-dir", str(data.source)]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    assert json.loads(session(target).get_modelmeta().custom_metadata_map["mean"]) == list(data.mean)


def test_bad_input_is_one_line_naming_the_problem_and_the_fix(data: CifarArrays, tmp_path: Path, capsys) -> None:
    stats = ckpt.input_metadata(data.mean, data.std, data.classes)
    tiny = build_net("c4net_tiny")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("model: c4net\n")
    cases = [
        ([str(tmp_path / "missing.safetensors")], ["missing.safetensors", "pass a .safetensors file"]),
        ([str(junk)], ["junk.safetensors", "not a readable safetensors file"]),
        ([str(tmp_path / "unfinished")], ["unfinished", "no model.safetensors", "best.safetensors"]),
        ([str(save(tiny, tmp_path / "as_seed.safetensors", {"model": "seed000", **stats}))],
         ["do not fit net 'seed000'", "missing keys", "--model"]),
        ([str(save(tiny, tmp_path / "renamed.safetensors", {"model": "resnet", **stats}))],
         ["'resnet'", "does not define", "c4net_tiny"]),
        ([str(save(tiny, tmp_path / "nameless.safetensors", stats))], ["does not say which net", "--model NAME"]),
        ([str(save(tiny, tmp_path / "garbled.safetensors", {"model": "c4net_tiny", **stats, "std": "0.25"}))],
         ["garbled.safetensors", "not JSON lists", "--data-dir"]),
        ([str(save(tiny, tmp_path / "flat.safetensors", {"model": "c4net_tiny", **stats, "std": "[0.2, 0, 0.2]"}))],
         ["flat.safetensors", "stds > 0", "--data-dir"]),
        ([str(save(tiny, tmp_path / "ok.safetensors", {"model": "c4net_tiny", **stats})), "--data-dir",
          str(tmp_path / "nothing")], ["no CIFAR-10 dataset", "nothing"]),
    ]
    for args, words in cases:
        target = tmp_path / "out.onnx"
        assert main([*args, "--onnx", str(target)]) == 2, args
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and message.startswith("error: "), message
        assert all(word in message for word in words), (args, message)
        assert not target.exists()
    # The right name for weights that carry none is enough.
    assert main([str(tmp_path / "nameless.safetensors"), "--model", "c4net_tiny", "--onnx", str(target)]) == 0
    assert json.loads(session(target).get_modelmeta().custom_metadata_map["classes"]) == list(data.classes)
    # A target that cannot be written.
    assert main([str(tmp_path / "ok.safetensors"), "--onnx", str(tmp_path)]) == 2
    assert "cannot write" in capsys.readouterr().err


# ---------------------------------------------------------------- a real run, end to end


@pytest.mark.slow
def test_a_trained_run_exports_from_its_folder_and_its_checkpoint_at_its_accuracy(data: CifarArrays,
                                                                                 tmp_path: Path) -> None:
    from tests.test_train import BASE, train

    run = tmp_path / "run"
    # Settings under which c4net_tiny learns enough in 3 short epochs to predict several classes.
    result = train(*BASE, "--data-dir", data.source, "--output-dir", run, "--augment", "none", "--batch-size", "16",
                   "--epochs", "3", "--lr", "0.1")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    newest = ckpt.list_checkpoints(run / "checkpoints")[-1]
    for source in (run, newest):  # the final weights two ways: the run's model.safetensors, its last checkpoint
        target = tmp_path / f"{source.name}.onnx"
        command = [sys.executable, "-m", "cifar.export", str(source), "--onnx", str(target)]
        exported = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert exported.returncode == 0, exported.stderr
        assert "net c4net_tiny" in exported.stdout
        props = session(target).get_modelmeta().custom_metadata_map
        assert (props["net"], tuple(json.loads(props["mean"]))) == ("c4net_tiny", data.mean)
        logits = run_onnx(session(target), data.test_images, 32)
        assert len(np.unique(logits.argmax(1))) >= 3  # a net that predicts one class would make this vacuous
        # train.py's test accuracy (what --eval-only prints) is PyTorch's on the same 100 images.
        assert float((logits.argmax(1) == data.test_labels).mean()) == pytest.approx(summary["test_acc"], abs=1e-12)
        net, _, _ = ckpt.load_net(source)
        with torch.no_grad():
            assert_same_predictions(logits, net.eval()(evaluation_inputs(data.test_images, data)).numpy())
    # Bad input from the shell: exit 2, one line, no traceback.
    bad = subprocess.run([sys.executable, "-m", "cifar.export", str(tmp_path / "none"), "--onnx",
                          str(tmp_path / "none.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr, bad.stderr
