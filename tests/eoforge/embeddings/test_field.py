from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.cube.tiles import CubeTile
from eoforge.embeddings.encoder import (
    ARCHITECTURE,
    PixelEncoder,
    embed_block,
    load_encoder,
    save_encoder,
)
from eoforge.embeddings.features import PixelBlock, read_block
from eoforge.embeddings.field import (
    check_field,
    dequantize,
    list_field_tiles,
    open_field_tile,
    quantize,
)
from eoforge.errors import ContractViolation, InputError


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 128), st.integers(0, 2**31 - 1))
def test_quantize_keeps_unit_vectors_within_half_a_step(dims: int, seed: int) -> None:
    v = np.random.default_rng(seed).normal(size=(7, dims)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q, s = quantize(v)
    back = dequantize(q, s)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert np.abs(back - v).max() <= s.max() / 2 + 1e-7
    assert np.abs(np.linalg.norm(back, axis=1) - 1).max() < 0.02


def test_zero_vector_quantizes_to_no_data() -> None:
    q, s = quantize(np.zeros((3, 8), np.float32))
    assert (q == 0).all() and (s == 0).all()


def test_field_layout_and_contract(field: Path, cube_tiles: list[CubeTile]) -> None:
    assert list_field_tiles(field) == sorted(t.grid.tile for t in cube_tiles)
    report = check_field(field)
    for cube_tile in cube_tiles:
        tile = open_field_tile(field, cube_tile.grid.tile)
        assert tile.dims == 16 and tile.grid == cube_tile.grid
        emb = tile.group["embedding"]
        assert isinstance(emb, zarr.Array)
        assert emb.dtype == np.int8 and emb.chunks == (16, 256, 256)
        assert tile.attrs["item_ids"] == cube_tile.item_ids
        assert report[cube_tile.grid.tile]["coverage"] > 0.9
        # pixels with a clear date have a vector, the others none
        block = read_block(cube_tile, slice(0, 64))
        _, ok = tile.rows(slice(0, 64))
        np.testing.assert_array_equal(ok, block.valid)


def test_stored_vectors_match_the_encoder(
    field: Path, cube_tiles: list[CubeTile], encoder: PixelEncoder
) -> None:
    tile = open_field_tile(field, cube_tiles[0].grid.tile)
    vec, ok = tile.rows(slice(100, 140))
    want = embed_block(encoder, read_block(cube_tiles[0], slice(100, 140)))
    assert np.abs(vec[ok] - want[ok]).max() < 1 / 127


def test_contract_catches_vectors_that_are_not_unit_length(field: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(field, broken)
    name = list_field_tiles(broken)[0]
    scale = zarr.open_group(str(broken), mode="r+")[name]["scale"]
    assert isinstance(scale, zarr.Array)
    scale[:10, :10] = np.asarray(scale[:10, :10]) * 2
    with pytest.raises(ContractViolation, match="unit length"):
        check_field(broken)
    with pytest.raises(ContractViolation, match="coverage"):
        check_field(field, min_coverage=1.0)


def test_not_a_field_is_refused(tmp_path: Path, real_cube: Path) -> None:
    with pytest.raises(InputError, match="not an embedding field"):
        list_field_tiles(tmp_path / "nothing.zarr")
    with pytest.raises(InputError, match="not an embedding field"):
        list_field_tiles(real_cube)


def test_encoder_round_trip_and_architecture(
    encoder: PixelEncoder, cube_tiles: list[CubeTile], tmp_path: Path
) -> None:
    record = save_encoder(encoder, tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    block = read_block(cube_tiles[0], slice(0, 8))
    np.testing.assert_allclose(embed_block(again, block), embed_block(encoder, block), atol=1e-6)
    assert len(record["weights_sha256"]) == 64 and record["architecture"] == ARCHITECTURE
    with pytest.raises(InputError, match="not an encoder folder"):
        load_encoder(tmp_path)
    # an encoder folder of the per-date MLP (no architecture recorded) is refused, not misread
    old = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    del old["architecture"]
    (tmp_path / "enc" / "encoder.json").write_text(json.dumps(old))
    with pytest.raises(InputError, match=r"another architecture.*train a new one"):
        load_encoder(tmp_path / "enc")


def _dates(block: PixelBlock, idx: list[int]) -> PixelBlock:
    return PixelBlock(block.rows, block.reflectance[idx], block.clear[idx], block.scl[idx],
                      block.doy[idx])  # fmt: skip


def test_encoder_embeds_any_number_and_order_of_dates(
    encoder: PixelEncoder, cube_tiles: list[CubeTile]
) -> None:
    """Trained on the cube's 5 dates, the encoder embeds 3 of them, or them in another order
    (a set of observations: the order does not change the vector)."""
    block = read_block(cube_tiles[0], slice(0, 32))
    t = block.doy.size
    assert t == encoder.config.dates == 5
    full = embed_block(encoder, block)
    shuffled = embed_block(encoder, _dates(block, list(range(t))[::-1]))
    np.testing.assert_allclose(shuffled, full, atol=1e-5)
    three = _dates(block, [0, 2, 4])
    got = embed_block(encoder, three)
    seen = three.valid
    assert got.shape == full.shape and not got[~seen].any()
    assert np.abs(np.linalg.norm(got[seen], axis=-1) - 1).max() < 1e-5
    # fewer dates change the vectors of pixels that lost clear ones, but not beyond recognition
    cos = (got[seen] * full[seen]).sum(axis=-1)
    assert np.median(cos) > 0.8
