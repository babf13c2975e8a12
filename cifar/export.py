"""Export a trained net to ONNX: ``python -m cifar.export RUN_DIR|WEIGHTS --onnx model.onnx``.

RUN_DIR|WEIGHTS is what ``train.py --eval-only`` takes (:func:`cifar.pretrained.resolve_weights`): a run folder (its
final ``model.safetensors``), a ``.safetensors`` file such as ``best.safetensors``, a checkpoint folder, or the
name of a shipped result.

The ONNX model takes what a deployment has at hand: ``pixels``, float32 ``[batch, 3, 32, 32]``, RGB, NCHW, the
uint8 values divided by 255 (so in [0, 1]), any batch size. The training normalisation, ``(pixels - mean) /
std``, is inside the model; its output ``logits`` is ``[batch, classes]``. The model's metadata_props say the
same (:data:`METADATA_KEYS`), so the file explains itself.

Mean, std and class names come from the weights' metadata (train.py records them with
:func:`cifar.checkpoint.input_metadata`); for weights saved without them, ``--data-dir`` reads them from the
dataset the net was trained on.

The graph comes from ``torch.onnx.export``'s torch.export-based exporter (``dynamo=True``; the TorchScript one
is deprecated), with the net in eval mode: dropout is gone and a BatchNorm that follows a convolution is folded
into it (one after a concatenation or a residual sum, as in ``c4next`` nets, stays an inference-mode
BatchNormalization).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch
from torch import nn

from cifar.checkpoint import CheckpointError, load_net
from cifar.data import IMAGE_SHAPE, CifarDataError, load_cifar
from cifar.files import write_atomic
from cifar.pretrained import resolve_weights

OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
INPUT_LAYOUT = "NCHW, RGB"
INPUT_RANGE = "float32 in [0, 1]: uint8 pixels / 255"
NORMALIZATION = "inside the model: (pixels - mean) / std; mean and std are recorded, not to be applied again"
METADATA_KEYS = ("net", "classes", "mean", "std", "input_layout", "input_range", "normalization")
_CHW = (IMAGE_SHAPE[2], *IMAGE_SHAPE[:2])


class ExportError(ValueError):
    """The weights lack what an export needs, or do not match it; the message says what and how to fix it."""


@dataclass(frozen=True)
class InputStats:
    """What a net's inputs were normalised with and what its outputs stand for (see ``input_metadata``)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]


class _NormalizedNet(nn.Module):
    """``net`` behind the training normalisation, so that it takes pixels in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - self.mean) / self.std)


def read_input_stats(metadata: Mapping[str, str], source: str) -> InputStats:
    """The mean, std and classes that train.py saved in the weights' ``metadata`` (read from ``source``).

    Raises:
        ExportError: they are missing (weights saved before train.py recorded them) or malformed.
    """
    missing = [key for key in ("mean", "std", "classes") if key not in metadata]
    if missing:
        raise ExportError(f"{source} does not record the training {', '.join(missing)} (saved before train.py "
                          "recorded them, or not by train.py): pass --data-dir with the dataset the net was "
                          "trained on")
    try:
        mean, std, classes = (json.loads(metadata[key]) for key in ("mean", "std", "classes"))
        stats = InputStats(tuple(float(v) for v in mean), tuple(float(v) for v in std),  # type: ignore[arg-type]
                           tuple(str(name) for name in classes))
    except (TypeError, ValueError) as error:
        raise ExportError(f"{source}: its mean/std/classes metadata is not JSON lists ({error}): pass --data-dir "
                          "with the dataset the net was trained on") from None
    _check_stats(stats, source)
    return stats


def export_onnx(net: nn.Module, path: Path, net_name: str, stats: InputStats) -> Path:
    """Write :func:`onnx_model` of these arguments to ``path`` and return ``path``; the file appears complete
    or not at all."""
    return write_atomic(Path(path), onnx_model(net, net_name, stats).SerializeToString())


def onnx_model(net: nn.Module, net_name: str, stats: InputStats) -> onnx.ModelProto:
    """``net`` (a copy of it, in eval mode) as a checked ONNX model.

    The model takes float32 NCHW RGB pixels in [0, 1] with a dynamic batch axis and normalises them with
    ``stats.mean``/``stats.std`` itself; ``net_name``, ``stats`` and the input convention go into its
    metadata_props (:data:`METADATA_KEYS`).

    Raises:
        ExportError: ``stats`` is malformed or names a different number of classes than the net outputs.
    """
    _check_stats(stats, "the input statistics")
    model = _NormalizedNet(copy.deepcopy(net), stats.mean, stats.std).eval()
    example = torch.rand(2, *_CHW)
    with torch.no_grad():
        width = model(example).shape[1]
    if width != len(stats.classes):
        raise ExportError(f"net {net_name!r} has {width} outputs but {len(stats.classes)} class names were given "
                          f"({', '.join(stats.classes)}): pass the classes of the dataset it was trained on")
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], verbose=False, optimize=True,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_metadata(net_name, stats))
    proto.doc_string = f"CIFAR net {net_name}: {_signature(len(stats.classes))}; normalisation {NORMALIZATION}"
    onnx.checker.check_model(proto)
    return proto


def onnx_metadata(net_name: str, stats: InputStats) -> dict[str, str]:
    """The metadata_props of an exported model: :data:`METADATA_KEYS`, lists as JSON text."""
    return {"net": net_name, "classes": json.dumps(list(stats.classes)), "mean": json.dumps(list(stats.mean)),
            "std": json.dumps(list(stats.std)), "input_layout": INPUT_LAYOUT, "input_range": INPUT_RANGE,
            "normalization": NORMALIZATION}


def _signature(classes: int) -> str:
    return (f"input {INPUT_NAME} float32 [batch, {', '.join(map(str, _CHW))}] ({INPUT_LAYOUT}; {INPUT_RANGE}), "
            f"output {OUTPUT_NAME} [batch, {classes}]")


def _check_stats(stats: InputStats, source: str) -> None:
    channels = _CHW[0]
    if (len(stats.mean) != channels or len(stats.std) != channels or min(stats.std) <= 0 or not stats.classes
            or not all(0 <= value <= 1 for value in stats.mean)):
        raise ExportError(f"{source}: expected {channels} per-channel means in [0, 1], {channels} stds > 0 and "
                          f"class names; got "
                          f"mean {list(stats.mean)}, std {list(stats.std)}, classes {list(stats.classes)}: pass "
                          "--data-dir with the dataset the net was trained on")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.export", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("weights", help="a train.py run folder, a .safetensors file, a checkpoint folder or the "
                                        "name of a shipped result")
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--model", help="the net's name, for weights whose metadata does not name it")
    parser.add_argument("--data-dir", type=Path,
                        help="take mean, std and class names from this dataset (the one the net was trained on) "
                             "instead of the weights' metadata; needed for weights saved without them")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        net, name, metadata = load_net(resolve_weights(args.weights), args.model)
        if args.data_dir is not None:
            data = load_cifar(args.data_dir)
            stats = InputStats(data.mean, data.std, data.classes)
        else:
            stats = read_input_stats(metadata, str(args.weights))
        model = onnx_model(net, name, stats)
    except (CheckpointError, CifarDataError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        path = write_atomic(args.onnx, model.SerializeToString())
    except OSError as error:
        print(f"error: cannot write {args.onnx} ({error.strerror or error}): pass --onnx a file path in a writable "
              "folder", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - start:.1f} s: net {name}, "
          f"{_signature(len(stats.classes))}; classes {', '.join(stats.classes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
