"""The segmentation network: a small UNet that takes raw Sentinel-2 DN and returns class logits.

Normalisation ``(x - band_mean) / band_std`` is part of the network (as buffers), so the
exported ONNX graph needs nothing but raw reflectance DN (ADR 0001). Optionally the network
also feeds itself normalised differences of band pairs, ``(a - b) / (a + b)`` (NDVI, NDWI):
ratios that Sen2Cor's own classification thresholds and that convolutions and ReLUs cannot
form from the bands. The net downsamples
three times, so input height and width must be multiples of :data:`WINDOW_MULTIPLE` (8);
:func:`check_window` says so before a caller feeds a bad window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from eoforge.errors import InputError

__all__ = [
    "ARCHITECTURE",
    "DEPTH",
    "SPECTRAL_INDICES",
    "WINDOW_MULTIPLE",
    "SegmentationUNet",
    "build_model",
    "check_window",
    "index_pairs_for",
    "unet_forward",
]

#: Name recorded in ``model.json`` for this architecture.
ARCHITECTURE = "unet"
#: Number of 2x downsamplings in the encoder.
DEPTH = 3
#: Height and width of every input must be a multiple of this (``2 ** DEPTH``).
WINDOW_MULTIPLE = 2**DEPTH
#: Normalised differences ``(a - b) / (a + b)`` by name, as (band a, band b).
SPECTRAL_INDICES: dict[str, tuple[str, str]] = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir")}


def check_window(height: int, width: int) -> None:
    """Check that an input window fits the network's downsampling.

    Args:
        height: window height in pixels.
        width: window width in pixels.

    Raises:
        InputError: height or width is not a positive multiple of :data:`WINDOW_MULTIPLE`.
    """
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % WINDOW_MULTIPLE:
            nearest = max(WINDOW_MULTIPLE, value // WINDOW_MULTIPLE * WINDOW_MULTIPLE)
            raise InputError(
                f"window {name} {value} is not a positive multiple of {WINDOW_MULTIPLE}: the "
                f"network downsamples {DEPTH} times; use a chip size / inference window that is "
                f"a multiple of {WINDOW_MULTIPLE} (e.g. {nearest}), or pad the input."
            )


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SegmentationUNet(nn.Module):
    """UNet of depth :data:`DEPTH` on raw DN input.

    Args:
        in_channels: number of input bands ``C``.
        num_classes: number of output classes ``K``.
        base_channels: feature channels at full resolution (doubled at each level).
        band_mean: per-band mean in DN (length ``C``), subtracted inside the network.
        band_std: per-band standard deviation in DN (length ``C``, all > 0).
        index_pairs: band index pairs ``(a, b)``; each adds the input channel
            ``(x_a - x_b) / (x_a + x_b + 1)`` computed from raw DN (0 where both are nodata).
    """

    band_mean: torch.Tensor
    band_std: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int,
        band_mean: Sequence[float],
        band_std: Sequence[float],
        index_pairs: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        self.index_pairs = tuple((int(a), int(b)) for a, b in index_pairs)
        mean = torch.tensor([float(v) for v in band_mean], dtype=torch.float32)
        std = torch.tensor([float(v) for v in band_std], dtype=torch.float32)
        self.register_buffer("band_mean", mean.view(1, in_channels, 1, 1))
        self.register_buffer("band_std", std.view(1, in_channels, 1, 1))
        widths = [base_channels * 2**level for level in range(DEPTH + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels + len(self.index_pairs)
        for width in widths[:-1]:
            self.encoders.append(_ConvBlock(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _ConvBlock(widths[-2], widths[-1])
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(DEPTH)):
            self.upsamplers.append(
                nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            )
            self.decoders.append(_ConvBlock(2 * widths[level], widths[level]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, K, H, W)`` for raw DN ``(N, C, H, W)`` float32."""
        return unet_forward(self, x, _concat_decode)


#: One decoder level: ``decode(decoder, upsampled, skip)`` -> features.
Decode = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _concat_decode(decoder: nn.Module, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = decoder(torch.cat([up, skip], dim=1))
    return out


def unet_forward(net: Any, x: torch.Tensor, decode: Decode) -> torch.Tensor:
    """The UNet's forward pass over ``net``'s parts (``band_mean``, ``band_std``,
    ``index_pairs``, ``encoders``, ``pool``, ``bottleneck``, ``upsamplers``, ``decoders``,
    ``head``), each decoder level run by ``decode``: the trained network and its exported
    inference form (:mod:`eoforge.export.graph`) share it and differ only there."""
    h = (x - net.band_mean) / net.band_std
    if net.index_pairs:
        ratios = [
            (x[:, a : a + 1] - x[:, b : b + 1]) / (x[:, a : a + 1] + x[:, b : b + 1] + 1.0)
            for a, b in net.index_pairs
        ]
        h = torch.cat([h, *ratios], dim=1)
    skips = []
    for encoder in net.encoders:
        h = encoder(h)
        skips.append(h)
        h = net.pool(h)
    h = net.bottleneck(h)
    for upsample, decoder, skip in zip(net.upsamplers, net.decoders, reversed(skips), strict=True):
        h = decode(decoder, upsample(h), skip)
    out: torch.Tensor = net.head(h)
    return out


def build_model(
    in_channels: int,
    num_classes: int,
    base_channels: int,
    band_mean: Sequence[float],
    band_std: Sequence[float],
    index_pairs: Sequence[tuple[int, int]] = (),
) -> SegmentationUNet:
    """Build the segmentation network (weights initialised from torch's current RNG).

    Args:
        in_channels: number of input bands ``C``.
        num_classes: number of output classes ``K``.
        base_channels: feature channels at full resolution (doubled at each of the
            :data:`DEPTH` levels).
        band_mean: per-band mean in DN, length ``C``.
        band_std: per-band standard deviation in DN, length ``C``, all > 0.
        index_pairs: band index pairs ``(a, b)`` whose normalised difference is added as an
            input channel (see :func:`index_pairs_for`).

    Returns:
        A :class:`SegmentationUNet` whose forward maps raw DN float32 ``(N, C, H, W)``
        (H, W multiples of :data:`WINDOW_MULTIPLE`) to logits ``(N, K, H, W)``.

    Raises:
        InputError: a size is not positive, or the band statistics do not match ``C``.
    """
    for name, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("base_channels", base_channels),
    ):
        if value <= 0:
            raise InputError(f"model {name} must be positive, got {value}; fix the spec.")
    if len(band_mean) != in_channels or len(band_std) != in_channels:
        raise InputError(
            f"band_mean ({len(band_mean)} values) and band_std ({len(band_std)} values) must have "
            f"one value per input band ({in_channels}); recompute the chip store statistics."
        )
    if any(not float(s) > 0 for s in band_std):
        raise InputError(
            f"band_std {list(band_std)} has a value <= 0 (or NaN): a band is constant or empty in "
            "the training chips; check the chip store."
        )
    for a, b in index_pairs:
        if not (0 <= a < in_channels and 0 <= b < in_channels and a != b):
            raise InputError(
                f"index pair ({a}, {b}) must name two different bands in 0..{in_channels - 1}; "
                "fix the band names of the chip store."
            )
    return SegmentationUNet(
        in_channels, num_classes, base_channels, band_mean, band_std, index_pairs
    )


def index_pairs_for(band_names: Sequence[str]) -> list[tuple[int, int]]:
    """Band index pairs of the normalised differences the network adds for these bands.

    NDVI ``(nir - red) / (nir + red)`` and NDWI ``(green - nir) / (green + nir)``, each only
    when both bands are present.
    """
    names = list(band_names)
    return [
        (names.index(a), names.index(b))
        for a, b in SPECTRAL_INDICES.values()
        if a in names and b in names
    ]
