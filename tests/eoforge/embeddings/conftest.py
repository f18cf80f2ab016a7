"""A small encoder trained on the bundled real cube and the field it writes, shared by the
embeddings tests (built once per test session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eoforge.cube.tiles import CubeTile, iter_cube_tiles
from eoforge.embeddings.encoder import EncoderConfig, PixelEncoder, sample_pixels, train_encoder
from eoforge.embeddings.field import write_field


@pytest.fixture(scope="session")
def cube_tiles(real_cube: Path) -> list[CubeTile]:
    return list(iter_cube_tiles(str(real_cube)))


@pytest.fixture(scope="session")
def encoder(cube_tiles: list[CubeTile]) -> PixelEncoder:
    refl, clear, doy = sample_pixels(cube_tiles, per_tile=4000, seed=0)
    return train_encoder(refl, clear, doy, EncoderConfig(dates=refl.shape[1], dims=16, epochs=2))


@pytest.fixture(scope="session")
def field(cube_tiles: list[CubeTile], encoder: PixelEncoder, tmp_path_factory: Any) -> Path:
    out = tmp_path_factory.mktemp("field") / "field.zarr"
    write_field(cube_tiles, encoder, out, encoder_sha256="test")
    return out
