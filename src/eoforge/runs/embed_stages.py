"""The embedding stages over paths: encoder and field (cached in the store), then the products
of a run (few-label classes, clusters, similarity, scores), each a plain function that the
Prefect tasks wrap one to one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.errors import InputError
from eoforge.io.atomic import write_json_atomic

__all__ = ["EmbedOptions", "stage_classify", "stage_clusters", "stage_encoder",
           "stage_evaluate", "stage_field", "stage_similarity"]  # fmt: skip


@dataclass(frozen=True)
class EmbedOptions:
    """What an embed run computes and how."""

    dims: int = 64
    """Embedding dimensions D."""
    epochs: int = 8
    """Encoder training passes."""
    sample_pixels: int = 100_000
    """Pixels per tile the encoder trains on."""
    seed: int = 0
    """Seed of every random draw."""
    clusters: int = 8
    """KMeans classes."""
    query: tuple[float, float] | None = None
    """Similarity query point (lon, lat); default the centre of the first tile."""
    labels: str | None = None
    """Points or polygons with a class column; default: points drawn from the SCL reference."""
    class_column: str = "class"
    """Column of ``labels`` holding class names."""
    classes: tuple[str, ...] = ("vegetation", "bare", "water")
    """Class names of the few-label classifiers."""
    shots: int = 10
    """Points per class drawn from the reference when ``labels`` is None."""

    def encoder_key(self, cube_uri: str) -> str:
        """Cache key of the encoder: the cube and the training settings."""
        keep = {
            k: v
            for k, v in asdict(self).items()
            if k in ("dims", "epochs", "sample_pixels", "seed")
        }
        from eoforge.embeddings.encoder import ARCHITECTURE

        text = json.dumps(
            {"cube": Path(cube_uri).name, "architecture": ARCHITECTURE, **keep}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _tiles(cube_uri: str) -> list[Any]:
    from eoforge.cube.tiles import iter_cube_tiles

    return list(iter_cube_tiles(cube_uri))


def stage_encoder(
    cube_uri: str, store: str, options: EmbedOptions, progress: Advance | None = None
) -> dict[str, Any]:
    """Train the encoder on the cube without labels, unless the store has it."""
    import time

    from eoforge.embeddings.encoder import (
        CONFIG,
        EncoderConfig,
        sample_pixels,
        save_encoder,
        train_encoder,
    )
    from eoforge.io.atomic import staged_dir

    folder = Path(store) / "embeddings" / f"encoder-{options.encoder_key(cube_uri)[:24]}"
    if (folder / CONFIG).is_file():
        return {"encoder_dir": str(folder), "reused": True,
                "record": json.loads((folder / CONFIG).read_text())}  # fmt: skip
    t0 = time.perf_counter()
    tiles = _tiles(cube_uri)
    refl, clear, doy = sample_pixels(tiles, options.sample_pixels, options.seed)
    config = EncoderConfig(
        dates=refl.shape[1], dims=options.dims, epochs=options.epochs, seed=options.seed
    )
    model = train_encoder(
        refl,
        clear,
        doy,
        config,
        None if progress is None else lambda e, n, _: progress("epochs", e, n),
    )
    with staged_dir(folder) as tmp:
        record = save_encoder(model, tmp, time.perf_counter() - t0)
    return {"encoder_dir": str(folder), "reused": False, "record": record, "pixels": len(refl)}


#: Called with (what, done, total) as a stage advances (encoder epochs, field blocks of a tile).
Advance = Callable[[str, int, int], None]


def stage_field(
    cube_uri: str, encoder_dir: str, store: str, progress: Advance | None = None
) -> dict[str, Any]:
    """Embed every pixel of the cube into the stored field (unless it exists); check it."""
    from eoforge.embeddings.encoder import CONFIG, load_encoder
    from eoforge.embeddings.field import check_field, write_field

    sha = json.loads((Path(encoder_dir) / CONFIG).read_text())["weights_sha256"]
    key = hashlib.sha256(f"{Path(cube_uri).name}:{sha}".encode()).hexdigest()
    field = Path(store) / "embeddings" / f"field-{key[:24]}.zarr"
    reused = field.exists()
    stats: dict[str, Any] = {}
    if not reused:
        stats = write_field(
            _tiles(cube_uri),
            load_encoder(Path(encoder_dir)),
            field,
            encoder_sha256=sha,
            progress=progress,
        )
    return {
        "field_uri": str(field),
        "reused": reused,
        "tiles": stats,
        "contract": check_field(field),
    }


def _field_tiles(field_uri: str) -> list[Any]:
    """The tiles of an embedding field or of a cube with a D-channel ``embedding`` variable."""
    from eoforge.embeddings.tiles import open_embedding_tiles

    return list(open_embedding_tiles(field_uri))


def _reference_points(cube_uri: str, field_uri: str, options: EmbedOptions) -> tuple[Any, Any]:
    from eoforge.cube.tiles import open_cube_tile
    from eoforge.embeddings.evaluate import TileTruth, draw_points

    first = _field_tiles(field_uri)[0]
    truth = TileTruth(open_cube_tile(cube_uri, first.grid.tile), first)
    idx = draw_points(truth, options.shots, options.seed)
    return truth.vec.reshape(-1, first.dims)[idx], truth.ref.ravel()[idx].astype(np.int64)


def stage_classify(
    cube_uri: str | None, field_uri: str, run_dir: Path, options: EmbedOptions
) -> dict[str, Any]:
    """kNN and linear probe from labelled points -> ONNX -> a class COG + STAC item per tile."""
    from eoforge.embeddings.classify import (
        CLASSIFIERS,
        apply_classifier,
        export_classifier,
        fit_classifier,
    )
    from eoforge.embeddings.points import labelled_vectors

    tiles = _field_tiles(field_uri)
    if options.labels:
        x, y = labelled_vectors(
            options.labels, options.class_column, options.classes, tiles, options.seed
        )
        source = options.labels
    elif cube_uri is not None:
        x, y = _reference_points(cube_uri, field_uri, options)
        source = f"{options.shots} points per class drawn from the SCL land-cover reference"
    else:
        raise InputError(
            "no labels to fit classifiers on: pass a points or polygons file (--labels), or "
            "the cube the field came from (--cube) to draw points from its SCL reference."
        )
    folder = Path(run_dir) / "classify"
    out: dict[str, Any] = {"labels": source, "points": len(y), "maps": {},
                           "classes": list(options.classes)}  # fmt: skip
    check = tiles[0].rows(slice(0, min(64, tiles[0].grid.height)))
    sample = check[0][check[1]]
    for kind in CLASSIFIERS:
        model = fit_classifier(kind, x, y, options.seed)
        exported = export_classifier(
            model, tiles[0].dims, folder / f"{kind}.onnx", sample if len(sample) else x,
            n_classes=len(options.classes),
        )  # fmt: skip
        for tile in tiles:
            tif = folder / f"{kind}-{tile.grid.tile}.tif"
            sha, stats = apply_classifier(folder / f"{kind}.onnx", tile, tif)
            item = _class_item(tif, kind, tile, field_uri, options.classes, source)
            write_json_atomic(tif.with_suffix(".json"), item)
            out["maps"][f"{kind}-{tile.grid.tile}"] = str(tif)
            out.setdefault("inference", {})[f"{kind}-{tile.grid.tile}"] = {"sha256": sha, **stats}
        out[kind] = {"parity": exported["parity"], "onnx": exported["onnx"]}
    return out


def _class_item(tif: Path, kind: str, tile: Any, field_uri: str, classes: Sequence[str],
                labels: str) -> dict[str, Any]:  # fmt: skip
    """The class COG's STAC item, written by the inference path's :func:`prediction_item`:
    the field tile is its source scene, the classifier's ONNX its model."""
    import datetime as dt

    from eoforge.inference.item import prediction_item

    g = tile.grid
    source = {
        "id": f"{kind}-{g.tile}",
        "properties": {"datetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "links": [{"rel": "self", "href": f"{field_uri}/{g.tile}"}],
    }
    item = prediction_item(tif, source, list(classes), None, g.crs, list(g.transform)[:6],
                           (g.height, g.width), model_name=f"{kind} on embeddings")  # fmt: skip
    item["properties"].update({"eoforge:classifier": kind, "eoforge:labels": labels,
                               "eoforge:item_ids": tile.attrs.get("item_ids", [])})  # fmt: skip
    item["links"].append({"rel": "via", "href": f"./{kind}.onnx", "type": "application/octet-stream",
                          "title": f"{kind} classifier (ONNX)"})  # fmt: skip
    return item


def stage_clusters(field_uri: str, run_dir: Path, options: EmbedOptions) -> dict[str, Any]:
    """MiniBatchKMeans over every tile; cluster COGs + items, centres as JSON."""
    from eoforge.embeddings.rasters import cog_asset, raster_item
    from eoforge.embeddings.unsupervised import cluster_map, fit_kmeans

    tiles = _field_tiles(field_uri)
    km = fit_kmeans(tiles, options.clusters, options.seed)
    folder = Path(run_dir) / "clusters"
    maps = {}
    for tile in tiles:
        tif = folder / f"clusters-{tile.grid.tile}.tif"
        sha = cluster_map(km, tile, tif)
        item = raster_item(f"clusters-{tile.grid.tile}", tile.grid,
                           {"clusters": cog_asset(tif, sha, ["data"])},
                           properties={"eoforge:clusters": options.clusters},
                           derived_from=[f"{field_uri}/{tile.grid.tile}"])  # fmt: skip
        write_json_atomic(tif.with_suffix(".json"), item)
        maps[tile.grid.tile] = str(tif)
    write_json_atomic(folder / "centres.json", {"k": options.clusters,
                                                "centres": km.cluster_centers_.tolist()})  # fmt: skip
    return {"maps": maps, "centres": str(folder / "centres.json"), "k": options.clusters}


def _query_point(tile: Any, query: tuple[float, float] | None) -> Any:
    import shapely
    from pyproj import Transformer

    if query is None:
        x0, y0, x1, y1 = tile.grid.bounds
        return shapely.Point((x0 + x1) / 2, (y0 + y1) / 2)
    x, y = Transformer.from_crs("EPSG:4326", tile.grid.crs, always_xy=True).transform(*query)
    return shapely.Point(x, y)


def stage_similarity(field_uri: str, run_dir: Path, options: EmbedOptions) -> dict[str, Any]:
    """Cosine similarity of every pixel to the query point's vector; a COG + item per tile."""
    from eoforge.embeddings.rasters import cog_asset, raster_item
    from eoforge.embeddings.unsupervised import query_vector, similarity_map

    tiles = _field_tiles(field_uri)
    home = next((t for t in tiles if _covers(t, _query_point(t, options.query))), None)
    if home is None:
        raise InputError(
            f"query point {options.query} (lon, lat) is in no tile of the field; pick one inside."
        )
    query = query_vector(home, _query_point(home, options.query))
    folder = Path(run_dir) / "similarity"
    maps = {}
    for tile in tiles:
        tif = folder / f"similarity-{tile.grid.tile}.tif"
        sha = similarity_map(query, tile, tif)
        item = raster_item(f"similarity-{tile.grid.tile}", tile.grid,
                           {"similarity": cog_asset(tif, sha, ["data"])},
                           properties={"eoforge:query": list(options.query or []),
                                       "eoforge:query_tile": home.grid.tile},
                           derived_from=[f"{field_uri}/{tile.grid.tile}"])  # fmt: skip
        write_json_atomic(tif.with_suffix(".json"), item)
        maps[tile.grid.tile] = str(tif)
    return {"maps": maps, "query_tile": home.grid.tile, "query_vector": query.tolist()}


def _covers(tile: Any, point: Any) -> bool:
    return bool(tile.grid.footprint().contains(point))


def stage_evaluate(cube_uri: str, field_uri: str, run_dir: Path, options: EmbedOptions,
                   shots: Sequence[int] = (5, 10, 25), seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:  # fmt: skip
    """Few-shot curves (first tile -> second) and cluster AMI against the SCL reference."""
    from eoforge.cube.tiles import open_cube_tile
    from eoforge.embeddings.evaluate import TileTruth, fewshot_curves

    tiles = _field_tiles(field_uri)
    if len(tiles) < 2:
        return {"skipped": "few-shot scores need a second tile to score on"}
    train, test = (TileTruth(open_cube_tile(cube_uri, t.grid.tile), t) for t in tiles[:2])
    curves = fewshot_curves(train, test, shots, seeds, trees=50)
    result = {"train_tile": tiles[0].grid.tile, "test_tile": tiles[1].grid.tile, "fewshot": curves}
    write_json_atomic(Path(run_dir) / "fewshot.json", result)
    return result
