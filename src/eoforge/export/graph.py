"""The UNet's inference form: exact rewrites that make the exported graph cheaper to run.

The trained :class:`~eoforge.training.models.SegmentationUNet` concatenates each upsampled
feature map with its skip connection and convolves the concatenation. ONNX Runtime's CPU
provider runs convolutions in its blocked NCHWc layout but a ``Concat`` of two NCHWc tensors
costs a copy of both, and a ``BatchNormalization`` after an ``Add`` is not folded. Here each
decoder's first convolution over ``cat([up, skip])`` is split into two convolutions whose
results are summed, ``conv_up(up) + conv_skip(skip)`` (the same linear map: the kernel is split
along its input channels), with the following BatchNorm folded into both kernels and the bias.
ONNX Runtime fuses the sum and the ReLU into the second convolution (its "Sum" input), so the
concatenation disappears. The result equals the trained network's up to float rounding;
:func:`eoforge.export.onnx.export_onnx` checks that on sample chips against the original.

Nothing here changes training or the saved weights: the rewrite is made at export time only.
"""

from __future__ import annotations

import torch
from torch import nn

from eoforge.training.models import SegmentationUNet, unet_forward

__all__ = ["InferenceUNet", "inference_form"]


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` as one convolution (eval-mode BatchNorm)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    kernel = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return kernel.detach().clone(), bias.detach().clone()


class _SplitDecoder(nn.Module):
    """``block(cat([up, skip]))`` as ``block_rest(relu(conv_skip(skip) + conv_up(up)))``."""

    def __init__(self, block: nn.Sequential, up_channels: int) -> None:
        super().__init__()
        conv1, bn1, _, conv2, bn2, _ = block
        assert isinstance(conv1, nn.Conv2d) and isinstance(bn1, nn.BatchNorm2d)
        assert isinstance(conv2, nn.Conv2d) and isinstance(bn2, nn.BatchNorm2d)
        kernel, bias = _folded(conv1, bn1)
        out_channels, in_channels = kernel.shape[:2]
        self.conv_up = nn.Conv2d(up_channels, out_channels, 3, padding=1, bias=False)
        self.conv_skip = nn.Conv2d(in_channels - up_channels, out_channels, 3, padding=1)
        self.conv_up.weight.data = kernel[:, :up_channels].contiguous()
        self.conv_skip.weight.data = kernel[:, up_channels:].contiguous()
        assert self.conv_skip.bias is not None
        self.conv_skip.bias.data = bias
        kernel2, bias2 = _folded(conv2, bn2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv2.weight.data = kernel2
        assert self.conv2.bias is not None
        self.conv2.bias.data = bias2

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv_skip(skip) + self.conv_up(up))
        return torch.relu(self.conv2(h))


class InferenceUNet(nn.Module):
    """The same function as a :class:`SegmentationUNet`, without the decoder concatenations."""

    def __init__(self, model: SegmentationUNet) -> None:
        super().__init__()
        self.band_mean = model.band_mean
        self.band_std = model.band_std
        self.index_pairs = model.index_pairs
        self.encoders = model.encoders
        self.pool = model.pool
        self.bottleneck = model.bottleneck
        self.upsamplers = model.upsamplers
        decoders = []
        for upsample, decoder in zip(model.upsamplers, model.decoders, strict=True):
            assert isinstance(upsample, nn.ConvTranspose2d) and isinstance(decoder, nn.Sequential)
            decoders.append(_SplitDecoder(decoder, upsample.out_channels))
        self.decoders = nn.ModuleList(decoders)
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, K, H, W)`` for raw DN ``(N, C, H, W)`` float32."""
        return unet_forward(self, x, _split_decode)


def _split_decode(decoder: nn.Module, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = decoder(up, skip)
    return out


def inference_form(model: nn.Module) -> nn.Module:
    """The module to export for ``model``: :class:`InferenceUNet` for a UNet in eval mode,
    ``model`` itself for anything else (the rewrite needs eval-mode BatchNorm statistics)."""
    if isinstance(model, SegmentationUNet) and not model.training:
        return InferenceUNet(model).eval()
    return model
