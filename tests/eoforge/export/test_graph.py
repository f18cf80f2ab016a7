"""The UNet's inference form computes what the trained network computes, without the concats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from eoforge.export.graph import InferenceUNet, inference_form
from eoforge.export.onnx import onnx_logits
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME
from eoforge.training.models import build_model


def _unet(index_pairs: list[tuple[int, int]]) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(4, 5, 8, [900.0, 1000.0, 1100.0, 2500.0], [300.0] * 4, index_pairs)
    gen = torch.Generator().manual_seed(4)
    for m in model.modules():  # BatchNorm statistics as after training, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def test_inference_form_matches_the_trained_network_in_torch_and_onnx(tmp_path: Path) -> None:
    model = _unet([(3, 2), (1, 3)])
    fast = inference_form(model)
    assert isinstance(fast, InferenceUNet)
    x = torch.from_numpy(np.random.default_rng(0).integers(1, 6000, (2, 4, 48, 40)).astype("f4"))
    with torch.inference_mode():
        expected = model(x).numpy()
        got = fast(x).numpy()
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())

    path = tmp_path / "fast.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        fast, (x[:1],), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=17, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, dynamo=False,
    )  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Concat") == 1, "only the spectral-index concat is left, no decoder concat"
    assert "BatchNormalization" not in ops
    logits = onnx_logits(path, x.numpy())
    assert np.abs(logits - expected).max() < 1e-3
    assert (logits.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_a_model_in_training_mode_is_exported_as_it_is() -> None:
    model = _unet([]).train()
    assert inference_form(model) is model
