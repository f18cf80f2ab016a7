"""A per-pixel encoder trained without labels: masked spectral-temporal reconstruction (ADR 0013).

Each pixel's dates are its tokens: the encoder sees the clear observations that survive a
random date drop-out and must give a unit-length vector from which a small decoder rebuilds
every clear observation, the dropped ones included. In a short window of dates the surface
changes little, so what survives in the vector is the surface's spectrum and its temporal
shape, not the clouds or which dates happened to be clear.

The encoder is a set function of its observations (each one's bands and day of year through
a shared MLP, pooled by masked mean and max), and the decoder rebuilds a date from the vector
and that date's day of year: a cube with any number of dates, on any days, can be embedded.
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
    "ARCHITECTURE",
    "EncoderConfig",
    "PixelEncoder",
    "embed_block",
    "load_encoder",
    "sample_pixels",
    "save_encoder",
    "train_encoder",
]

#: Pixels encoded at once when embedding a block (bounds the (pixels, dates, hidden) tokens).
BATCH = 16384
#: Architecture of the encoder (part of the store's cache key and of encoder.json).
ARCHITECTURE = "observation-set MLP, masked mean+max pooling, day-of-year decoder"
#: Files of an encoder folder.
WEIGHTS = "encoder.safetensors"
CONFIG = "encoder.json"


@dataclass(frozen=True)
class EncoderConfig:
    """Shape and training of a :class:`PixelEncoder`."""

    dates: int
    """Time slices per pixel of the cube trained on (recorded; any number can be embedded)."""
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


def _season(doy: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` position of a day of year on the annual cycle (sin, cos)."""
    angle = doy * (2 * torch.pi / 365.25)
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)


class PixelEncoder(nn.Module):
    """(pixels, dates, bands) + clear mask + day of year -> (pixels, D) unit vectors; and a
    decoder from a vector and a day of year back to that date's bands."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        b, h = len(config.bands), config.hidden
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean or [0.0] * b, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config.std or [1.0] * b, dtype=torch.float32))
        self.token = nn.Sequential(nn.Linear(b + 2, h), nn.GELU(), nn.Linear(h, h), nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, config.dims))
        self.decoder = nn.Sequential(nn.Linear(config.dims + 2, h), nn.GELU(), nn.Linear(h, b))

    def encode(self, refl: torch.Tensor, shown: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        """Unit vectors of pixels ``refl`` (n, t, b) whose dates ``shown`` (n, t) are visible;
        ``doy`` (n, t) or (t,) is each date's day of year."""
        z = (refl - self.mean) / self.std
        season = _season(doy.expand(shown.shape))
        tokens = self.token(torch.cat([z, season], dim=-1))  # (n, t, h)
        m = shown[..., None].float()
        count = m.sum(dim=1).clamp(min=1.0)
        mean = (tokens * m).sum(dim=1) / count
        peak = tokens.masked_fill(m == 0, float("-inf")).amax(dim=1)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        return nn.functional.normalize(self.head(torch.cat([mean, peak], dim=1)), dim=1)

    def decode(self, emb: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        """Normalised reflectance (n, t, b) of the dates ``doy`` (n, t) rebuilt from vectors."""
        season = _season(doy)
        n, t = season.shape[:2]
        x = torch.cat([emb[:, None, :].expand(n, t, emb.shape[1]), season], dim=-1)
        out: torch.Tensor = self.decoder(x)
        return out


def _pixels(block: PixelBlock) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """(n, t, b) reflectance and (n, t) clear flags of the block's pixels, row-major."""
    t, b, h, w = block.reflectance.shape
    refl = block.reflectance.transpose(2, 3, 0, 1).reshape(h * w, t, b)
    clear = block.clear.transpose(1, 2, 0).reshape(h * w, t)
    return np.ascontiguousarray(refl), np.ascontiguousarray(clear)


def sample_pixels(
    tiles: Iterable[CubeTile], per_tile: int, seed: int, rows: int = 256,
    columns: slice | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]]:  # fmt: skip
    """Up to ``per_tile`` random pixels with a clear date from each tile (only ``columns`` of
    it if given), read block by block: (n, t, b) reflectance, (n, t) clear flags and (n, t) day
    of year. Tiles with fewer dates than the most are padded with dates never clear."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]]] = []
    for tile in tiles:
        w = tile.grid.width
        cols = np.arange(w)[columns] if columns is not None else np.arange(w)
        share = per_tile / max(1, tile.grid.height * cols.size)
        inside = np.zeros(w, bool)
        inside[cols] = True
        for block in iter_blocks(tile, rows):
            refl, clear = _pixels(block)
            ok = np.flatnonzero(clear.any(axis=1) & inside[np.arange(len(clear)) % w])
            take = ok[rng.random(ok.size) < share]
            doy = np.broadcast_to(block.doy, (take.size, block.doy.size))
            parts.append((refl[take], clear[take], np.ascontiguousarray(doy)))
    if not parts or sum(len(p[0]) for p in parts) == 0:
        raise InputError("the cube has no pixel with a clear observation to train an encoder on.")
    t = max(p[0].shape[1] for p in parts)

    def pad(a: NDArray[Any]) -> NDArray[Any]:
        return np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    return (
        np.concatenate([pad(p[0]) for p in parts]),
        np.concatenate([pad(p[1]) for p in parts]),
        np.concatenate([pad(p[2]) for p in parts]),
    )


def train_encoder(
    refl: NDArray[np.float32],
    clear: NDArray[np.bool_],
    doy: NDArray[np.float32],
    config: EncoderConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> PixelEncoder:
    """Train an encoder on sampled pixels (no labels); ``progress(epoch, epochs, loss)``."""
    if refl.ndim != 3 or refl.shape[2] != len(config.bands) or clear.shape != refl.shape[:2] \
            or doy.shape != clear.shape:  # fmt: skip
        raise InputError(
            f"pixels of shape {refl.shape} (clear {clear.shape}, day of year {doy.shape}) are "
            f"not (n, dates, {len(config.bands)} bands); sample them with sample_pixels."
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
    d = torch.from_numpy(doy)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(x), config.batch):
            idx = order[i : i + config.batch]
            xb, mb, db = x[idx], m[idx], d[idx]
            shown = mb & (torch.rand(mb.shape, generator=gen) < config.keep)
            # every pixel keeps at least one clear date to encode from
            first = mb.float().argmax(dim=1)
            shown[torch.arange(len(idx)), first] |= ~shown.any(dim=1) & mb.any(dim=1)
            target = (xb - model.mean) / model.std
            err = (model.decode(model.encode(xb, shown, db), db) - target) ** 2
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
    """``(h, w, D)`` unit vectors of a block's pixels (0 where no date is clear), whatever the
    block's number of dates."""
    _, _, h, w = block.reflectance.shape
    refl, clear = _pixels(block)
    doy = torch.from_numpy(np.ascontiguousarray(block.doy, np.float32))
    out = np.empty((len(refl), model.config.dims), np.float32)
    # batches bound the (pixels, dates, hidden) tokens (a 10980 px wide block would need
    # gigabytes at once)
    for i in range(0, len(refl), BATCH):
        x, m = torch.from_numpy(refl[i : i + BATCH]), torch.from_numpy(clear[i : i + BATCH])
        out[i : i + BATCH] = model.encode(x, m, doy).numpy()
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
        "architecture": ARCHITECTURE,
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
    record = json.loads(cfg.read_text())
    if record.get("architecture") != ARCHITECTURE:
        raise InputError(
            f"encoder '{folder}' was written for another architecture "
            f"({record.get('architecture', 'per-date MLP of a fixed number of dates')}); this "
            f"eoforge's is '{ARCHITECTURE}': train a new one (eoforge embed run does)."
        )
    raw = record["config"]
    raw["bands"] = tuple(raw["bands"])
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    model = PixelEncoder(EncoderConfig(**raw))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model
