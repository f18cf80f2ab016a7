"""A per-pixel encoder trained without labels: masked spectral-temporal reconstruction (ADR 0013).

Each pixel's dates are its tokens: the encoder sees the clear observations that survive a
random date drop-out and must give a unit-length vector from which a small decoder rebuilds
every clear observation, the dropped ones included. In a short window of dates the surface
changes little, so what survives in the vector is the surface's spectrum and its temporal
shape, not the clouds or which dates happened to be clear.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from eoforge.cube.tiles import CubeTile
from eoforge.embeddings.features import BANDS, PixelBlock, iter_blocks
from eoforge.errors import InputError
from eoforge.io.atomic import sha256_file, staged_file, write_json_atomic

__all__ = [
    "EncoderConfig",
    "PixelEncoder",
    "embed_block",
    "load_encoder",
    "sample_pixels",
    "save_encoder",
    "train_encoder",
]

#: Pixels encoded at once when embedding a block.
BATCH = 65536
#: Files of an encoder folder.
WEIGHTS = "encoder.safetensors"
CONFIG = "encoder.json"


@dataclass(frozen=True)
class EncoderConfig:
    """Shape and training of a :class:`PixelEncoder`."""

    dates: int
    """Time slices per pixel (the cube's dates)."""
    bands: tuple[str, ...] = BANDS
    """Cube variables read per date."""
    dims: int = 64
    """Embedding dimensions D."""
    hidden: int = 256
    """Width of the hidden layers."""
    epochs: int = 12
    """Passes over the sampled pixels."""
    batch: int = 2048
    """Pixels per optimiser step."""
    keep: float = 0.6
    """Probability that a clear date is shown to the encoder during training."""
    lr: float = 2e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the pixel sample, the drop-out and the weights."""
    mean: tuple[float, ...] = ()
    """Per-band reflectance mean of the training pixels (set by training)."""
    std: tuple[float, ...] = ()
    """Per-band reflectance standard deviation of the training pixels (set by training)."""


class PixelEncoder(nn.Module):
    """(pixels, dates, bands) + clear mask -> (pixels, D) unit vectors; and a decoder back."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        t, b, h = config.dates, len(config.bands), config.hidden
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean or [0.0] * b, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config.std or [1.0] * b, dtype=torch.float32))
        self.encoder = nn.Sequential(
            nn.Linear(t * (b + 1), h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
            nn.Linear(h, config.dims),
        )  # fmt: skip
        self.decoder = nn.Sequential(nn.Linear(config.dims, h), nn.GELU(), nn.Linear(h, t * b))

    def encode(self, refl: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """Unit vectors of pixels ``refl`` (n, t, b) whose dates ``shown`` (n, t) are visible."""
        z = ((refl - self.mean) / self.std) * shown[..., None]
        x = torch.cat([z.flatten(1), shown.float()], dim=1)
        return nn.functional.normalize(self.encoder(x), dim=1)

    def decode(self, emb: torch.Tensor) -> torch.Tensor:
        """Normalised reflectance (n, t, b) rebuilt from embeddings."""
        t, b = self.config.dates, len(self.config.bands)
        out: torch.Tensor = self.decoder(emb)
        return out.view(-1, t, b)


def _pixels(block: PixelBlock) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """(n, t, b) reflectance and (n, t) clear flags of the block's pixels, row-major."""
    t, b, h, w = block.reflectance.shape
    refl = block.reflectance.transpose(2, 3, 0, 1).reshape(h * w, t, b)
    clear = block.clear.transpose(1, 2, 0).reshape(h * w, t)
    return np.ascontiguousarray(refl), np.ascontiguousarray(clear)


def sample_pixels(
    tiles: Iterable[CubeTile], per_tile: int, seed: int, rows: int = 256
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Up to ``per_tile`` random pixels with a clear date from each tile, read block by block."""
    rng = np.random.default_rng(seed)
    refl_parts: list[NDArray[np.float32]] = []
    clear_parts: list[NDArray[np.bool_]] = []
    for tile in tiles:
        share = per_tile / max(1, tile.grid.height * tile.grid.width)
        for block in iter_blocks(tile, rows):
            refl, clear = _pixels(block)
            ok = np.flatnonzero(clear.any(axis=1))
            take = ok[rng.random(ok.size) < share]
            refl_parts.append(refl[take])
            clear_parts.append(clear[take])
    if not refl_parts or sum(len(p) for p in refl_parts) == 0:
        raise InputError("the cube has no pixel with a clear observation to train an encoder on.")
    return np.concatenate(refl_parts), np.concatenate(clear_parts)


def train_encoder(
    refl: NDArray[np.float32],
    clear: NDArray[np.bool_],
    config: EncoderConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> PixelEncoder:
    """Train an encoder on sampled pixels (no labels); ``progress(epoch, epochs, loss)``."""
    if refl.ndim != 3 or refl.shape[1:] != (config.dates, len(config.bands)):
        raise InputError(
            f"pixels of shape {refl.shape} do not match {config.dates} dates x "
            f"{len(config.bands)} bands; sample them from the cube the encoder is for."
        )
    torch.manual_seed(config.seed)
    shown_refl = np.where(clear[..., None], refl, np.nan)
    mean = np.nanmean(shown_refl, axis=(0, 1))
    std = np.nanstd(shown_refl, axis=(0, 1)) + 1e-4
    config = EncoderConfig(**{**asdict(config), "mean": tuple(map(float, mean)),
                              "std": tuple(map(float, std))})  # fmt: skip
    model = PixelEncoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    x = torch.from_numpy(refl)
    m = torch.from_numpy(clear)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(x), config.batch):
            idx = order[i : i + config.batch]
            xb, mb = x[idx], m[idx]
            shown = mb & (torch.rand(mb.shape, generator=gen) < config.keep)
            # every pixel keeps at least one clear date to encode from
            first = mb.float().argmax(dim=1)
            shown[torch.arange(len(idx)), first] |= ~shown.any(dim=1) & mb.any(dim=1)
            target = (xb - model.mean) / model.std
            err = (model.decode(model.encode(xb, shown)) - target) ** 2
            loss = (err * mb[..., None]).sum() / (mb.sum() * len(config.bands)).clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        if progress is not None:
            progress(epoch + 1, config.epochs, total / max(seen, 1))
    model.eval()
    return model


@torch.inference_mode()
def embed_block(model: PixelEncoder, block: PixelBlock) -> NDArray[np.float32]:
    """``(h, w, D)`` unit vectors of a block's pixels (0 where no date is clear)."""
    t, _, h, w = block.reflectance.shape
    if t != model.config.dates:
        raise InputError(
            f"the cube has {t} dates but the encoder was trained on {model.config.dates}; train "
            "an encoder on this cube (eoforge embed run trains one for its cube)."
        )
    refl, clear = _pixels(block)
    out = np.empty((len(refl), model.config.dims), np.float32)
    # batches bound the hidden activations (a 10980 px wide block would need gigabytes at once)
    for i in range(0, len(refl), BATCH):
        x, m = torch.from_numpy(refl[i : i + BATCH]), torch.from_numpy(clear[i : i + BATCH])
        out[i : i + BATCH] = model.encode(x, m).numpy()
    out[~clear.any(axis=1)] = 0.0
    return out.reshape(h, w, -1)


def save_encoder(model: PixelEncoder, folder: Path, seconds: float | None = None) -> dict[str, Any]:
    """Write ``encoder.safetensors`` + ``encoder.json``; return the config record."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with staged_file(folder / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    record = {
        "config": asdict(model.config),
        "objective": "masked spectral-temporal reconstruction",
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "parameters": sum(p.numel() for p in model.parameters()),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": seconds,
    }
    write_json_atomic(folder / CONFIG, record)
    return record


def load_encoder(folder: Path) -> PixelEncoder:
    """Read an encoder folder written by :func:`save_encoder`.

    Raises:
        InputError: the folder lacks its files.
    """
    from safetensors.torch import load_file

    cfg, weights = Path(folder) / CONFIG, Path(folder) / WEIGHTS
    if not cfg.is_file() or not weights.is_file():
        raise InputError(
            f"'{folder}' is not an encoder folder (needs {CONFIG} and {WEIGHTS}); pass the "
            "'encoder' folder an embed run wrote."
        )
    raw = json.loads(cfg.read_text())["config"]
    raw["bands"] = tuple(raw["bands"])
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    model = PixelEncoder(EncoderConfig(**raw))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model
