"""Whole-scene inference with ONNX Runtime and its outputs.

Sliding windows over a scene are blended into one class map (:func:`predict_scene`), written as a
deterministic Cloud-Optimized GeoTIFF (:func:`write_prediction`) and described by a STAC item that
links back to its source scene and model (:func:`prediction_item`), to be written with
:func:`write_json_atomic` (re-exported from :mod:`eoforge.storage`). ADR 0001 has the formats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_geom

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.storage import sha256_file, staged_file, write_json_atomic

__all__ = [
    "INPUT_NAME",
    "NODATA_CLASS",
    "OUTPUT_NAME",
    "open_session",
    "predict_scene",
    "prediction_item",
    "write_json_atomic",
    "write_prediction",
]

#: Class value of pixels without a prediction (input nodata), in the COG and the STAC item.
NODATA_CLASS = 255
#: Names of the model's input and output tensors (ADR 0001).
INPUT_NAME = "image"
OUTPUT_NAME = "logits"

_CLASS_NAME = re.compile(r"^[0-9A-Za-z_-]+$")  # what the classification extension allows
_COORD_DIGITS = 7  # ~1 cm in lon/lat: stable footprints across GDAL/PROJ builds
_EDGE_POINTS = 8  # points per footprint edge, so the lon/lat polygon follows the curved edge


# --------------------------------------------------------------------------- model session


def open_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """Open an exported model for inference.

    CUDA is used first when this onnxruntime build offers it, the CPU otherwise.

    Args:
        onnx_path: the ``model.onnx`` written by the export stage.
        threads: intra-op threads (None: onnxruntime's default, all physical cores).

    Returns:
        The session; its input is ``image`` and its output ``logits`` (checked).

    Raises:
        InputError: the file is missing, is not a loadable ONNX model, or has other tensors.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX model '{path}' does not exist; run the export stage first.")
    if threads is not None and threads < 1:
        raise InputError(f"threads={threads} for '{path}' must be >= 1 (or None for all cores).")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1  # one sequential graph: more inter-op threads only contend
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime's own error types derive from Exception only
        raise InputError(
            f"ONNX model '{path}' cannot be loaded by onnxruntime {ort.__version__}: {exc}; "
            "re-export the model."
        ) from exc
    _model_io(session, where=f"ONNX model '{path}'")
    return session


@dataclass(frozen=True)
class _ModelIO:
    """The static dimensions of a session's ``image`` input (None where dynamic)."""

    channels: int | None
    batch: int | None
    height: int | None
    width: int | None


def _model_io(session: Any, where: str) -> _ModelIO:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise InputError(
            f"{where} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; eoforge needs "
            f"input '{INPUT_NAME}' and output '{OUTPUT_NAME}' (ADR 0001): re-export the model."
        )
    image = inputs[INPUT_NAME]
    if image.type != "tensor(float)" or len(image.shape) != 4:
        raise InputError(
            f"{where}: input '{INPUT_NAME}' is {image.type} of shape {image.shape}; it must be "
            "float32 (N, bands, H, W) raw DN: re-export the model."
        )
    dims = [d if isinstance(d, int) and d > 0 else None for d in image.shape]
    return _ModelIO(channels=dims[1], batch=dims[0], height=dims[2], width=dims[3])


# --------------------------------------------------------------------------- sliding window


def _axis_plan(
    size: int, window: int, overlap: int, static: int | None
) -> tuple[int, int, list[int]]:
    """Window edge, padded extent and window starts along one axis.

    A scene at least one window long is never padded: the last window shifts inward instead.
    A shorter one is padded (by reflection) to a multiple of 8, or to a static model's window.
    """
    if static is not None:
        edge = static
    elif size >= window:
        edge = window
    else:
        edge = -(-size // 8) * 8
    padded = max(size, edge)
    last = padded - edge
    if last == 0:
        return edge, padded, [0]
    starts = list(range(0, last + 1, edge - overlap))
    if starts[-1] != last:
        starts.append(last)
    return edge, padded, starts


def _axis_weights(starts: Sequence[int], edge: int) -> list[npt.NDArray[np.float32]]:
    """Blend weights of each window along one axis.

    Linear ramps over the actual overlap with each neighbour: complementary ramps of two windows
    sum to 1, so the blend has no seam; a side at the scene border keeps full weight; every weight
    is > 0, so a pixel seen by one window only still gets its prediction.
    """
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(edge, np.float32)
        if i > 0:
            n = starts[i - 1] + edge - start
            if n > 0:
                w[:n] = np.minimum(w[:n], np.arange(1, n + 1, dtype=np.float32) / (n + 1))
        if i < len(starts) - 1:
            n = start + edge - starts[i + 1]
            if n > 0:
                w[edge - n :] = np.minimum(
                    w[edge - n :], np.arange(n, 0, -1, dtype=np.float32) / (n + 1)
                )
        weights.append(w)
    return weights


def _softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    z: npt.NDArray[np.float32] = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _check_spec(spec: InferSpec) -> None:
    if spec.window <= 0 or spec.window % 8:
        raise InputError(
            f"infer.window={spec.window} must be a positive multiple of 8 (the model downsamples "
            "by 8); set it to e.g. 256."
        )
    if not 0 <= spec.overlap < spec.window:
        raise InputError(
            f"infer.overlap={spec.overlap} must be >= 0 and smaller than infer.window="
            f"{spec.window}; lower it (e.g. window // 4)."
        )
    if spec.batch_size < 1:
        raise InputError(f"infer.batch_size={spec.batch_size} must be >= 1.")


def predict_scene(
    session: ort.InferenceSession,
    bands: npt.NDArray[Any],
    spec: InferSpec,
    nodata: int = 0,
) -> npt.NDArray[np.uint8]:
    """Predict a class for every pixel of a scene with a sliding window.

    Windows of ``spec.window`` pixels overlapping by ``spec.overlap`` are run in batches of
    ``spec.batch_size``; their softmax probabilities are accumulated with a separable linear taper
    and the class is the argmax. Rows are finalised as soon as no later window can touch them, so
    memory holds one strip of probabilities, not the whole scene. Windows without a single valid
    pixel are skipped.

    Args:
        session: from :func:`open_session` (input ``image`` float32 (N, C, h, w) raw DN, output
            ``logits`` (N, K, h, w)).
        bands: (C, H, W) raw DN (uint16 surface reflectance * 1e4), any H, W >= 1.
        spec: window, overlap and batch size.
        nodata: input value marking missing data.

    Returns:
        (H, W) uint8 class indices; :data:`NODATA_CLASS` (255) where any band equals ``nodata``.

    Raises:
        InputError: bad ``bands`` or ``spec``, or a model that does not fit them (channel count,
            static window size) or returns unusable logits.
    """
    where = "predict_scene"
    if bands.ndim != 3 or min(bands.shape) < 1:
        raise InputError(f"{where}: bands must be a non-empty (C, H, W) array, got {bands.shape}.")
    if not (np.issubdtype(bands.dtype, np.integer) or np.issubdtype(bands.dtype, np.floating)):
        raise InputError(f"{where}: bands must be numeric (uint16 DN), got {bands.dtype}.")
    _check_spec(spec)
    io = _model_io(session, where="the ONNX session")
    channels, height, width = bands.shape
    if io.channels is not None and io.channels != channels:
        raise InputError(
            f"the ONNX model expects {io.channels} input bands but the scene has {channels}; pass "
            "the bands the model was trained on (model.json 'bands'), in that order."
        )
    for axis, static in (("height", io.height), ("width", io.width)):
        if static is not None and static != spec.window:
            raise InputError(
                f"the ONNX model has a fixed input {axis} of {static} px but infer.window is "
                f"{spec.window}; set infer.window to {static} or export with dynamic axes."
            )

    edge_y, padded_h, ys = _axis_plan(height, spec.window, spec.overlap, io.height)
    edge_x, padded_w, xs = _axis_plan(width, spec.window, spec.overlap, io.width)
    weights_y = _axis_weights(ys, edge_y)
    weights_x = _axis_weights(xs, edge_x)

    valid = np.ones((height, width), bool)
    for band in bands:  # band by band: no (C, H, W) boolean temporary
        valid &= band != nodata
    pad = ((0, padded_h - height), (0, padded_w - width))
    if pad != ((0, 0), (0, 0)):
        bands = np.pad(bands, ((0, 0), *pad), mode="reflect")
        valid = np.pad(valid, pad, mode="reflect")
    windows = [
        (i, j)
        for i, y in enumerate(ys)
        for j, x in enumerate(xs)
        if valid[y : y + edge_y, x : x + edge_x].any()
    ]
    batch_size = io.batch or spec.batch_size

    out = np.full((height, width), NODATA_CLASS, np.uint8)
    acc: npt.NDArray[np.float32] | None = None  # probabilities of rows [done, done + len)
    done = 0
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        stack = np.zeros(
            (batch_size if io.batch else len(batch), channels, edge_y, edge_x), np.float32
        )
        for k, (i, j) in enumerate(batch):
            stack[k] = bands[:, ys[i] : ys[i] + edge_y, xs[j] : xs[j] + edge_x]
        logits = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: stack})[0])
        if (
            logits.ndim != 4
            or logits.shape[0] != len(stack)
            or logits.shape[2:] != (edge_y, edge_x)
        ):
            raise InputError(
                f"the ONNX model returned logits of shape {logits.shape} for windows of shape "
                f"{stack.shape}; it must return (N, classes, h, w) at the input resolution."
            )
        if not 1 <= logits.shape[1] <= NODATA_CLASS:
            raise InputError(
                f"the ONNX model returns {logits.shape[1]} classes; 1..255 are supported."
            )
        if not np.isfinite(logits[: len(batch)]).all():
            raise InputError("the ONNX model returned non-finite logits; retrain or re-export it.")
        probs = _softmax(logits[: len(batch)].astype(np.float32, copy=False))
        if acc is None:
            acc = np.zeros((probs.shape[1], 0, padded_w), np.float32)
        for k, (i, j) in enumerate(batch):
            top, bottom = ys[i] - done, ys[i] + edge_y - done
            if bottom > acc.shape[1]:
                acc = _grow_rows(acc, bottom)
            probs[k] *= weights_y[i][:, None] * weights_x[j][None, :]
            acc[:, top:bottom, xs[j] : xs[j] + edge_x] += probs[k]
        # rows above the next window's top are complete: no later window reaches them
        next_top = (
            ys[windows[first + batch_size][0]] if first + batch_size < len(windows) else padded_h
        )
        ready = min(next_top, height) - done
        if ready > 0:
            acc = _grow_rows(acc, ready) if ready > acc.shape[1] else acc
            out[done : done + ready] = _argmax_classes(acc[:, :ready, :width])
            acc = acc[:, ready:]
            done += ready
    out[~valid[:height, :width]] = NODATA_CLASS
    return out


def _argmax_classes(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``argmax(axis=0)`` (first maximum wins) for few classes, ~2x faster on strided strips."""
    best = probs[0].copy()
    index = np.zeros(best.shape, np.uint8)
    for k in range(1, probs.shape[0]):
        index[probs[k] > best] = k
        np.maximum(best, probs[k], out=best)
    return index


def _grow_rows(acc: npt.NDArray[np.float32], rows: int) -> npt.NDArray[np.float32]:
    grown = np.zeros((acc.shape[0], rows, acc.shape[2]), np.float32)
    grown[:, : acc.shape[1]] = acc
    return grown


# --------------------------------------------------------------------------- files


def _parse_crs(crs: str) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except (CRSError, ValueError) as exc:  # rasterio raises ValueError for "EPSG:<not int>"
        raise InputError(f"CRS '{crs}' is not understood ({exc}); pass e.g. 'EPSG:32633'.") from exc


def _affine(transform: Sequence[float]) -> Affine:
    values = tuple(float(v) for v in transform)
    if len(values) not in (6, 9) or not all(np.isfinite(values)):
        raise InputError(
            f"transform {transform!r} must be 6 finite floats in rasterio Affine order a,b,c,d,e,f."
        )
    return Affine(*values[:6])


def write_prediction(
    pred: npt.NDArray[np.uint8], crs: str, transform: Sequence[float], out_tif: Path
) -> str:
    """Write a class map as a Cloud-Optimized GeoTIFF, atomically and byte-reproducibly.

    DEFLATE-compressed, nodata 255, internal overviews resampled with MODE (a class map must
    never be averaged). GDAL writes no timestamp, so the same input gives the same bytes.

    Args:
        pred: (H, W) uint8 class indices, 255 = nodata.
        crs: CRS of the scene grid, e.g. ``"EPSG:32633"``.
        transform: the grid's affine transform, 6 floats (rasterio order a, b, c, d, e, f).
        out_tif: destination, e.g. ``DIR/predictions/<item_id>.tif``.

    Returns:
        sha256 hex digest of the file.

    Raises:
        InputError: ``pred`` is not a 2-D uint8 array, or ``crs``/``transform`` are invalid.
    """
    if pred.ndim != 2 or pred.dtype != np.uint8 or min(pred.shape) < 1:
        raise InputError(
            f"prediction for '{out_tif}' must be a non-empty 2-D uint8 array, got {pred.dtype} "
            f"{pred.shape}."
        )
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": pred.shape[1],
        "height": pred.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": _parse_crs(crs),
        "transform": _affine(transform),
        "nodata": NODATA_CLASS,
        "compress": "DEFLATE",
        "overview_resampling": "MODE",
        "blocksize": 512,
        "bigtiff": "IF_SAFER",
        "num_threads": 1,
    }
    with staged_file(Path(out_tif)) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):  # no .aux.xml
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pred, 1)
        digest = sha256_file(tmp)
    return digest


# --------------------------------------------------------------------------- STAC item


def _source_href(source_item: dict[str, Any], source_href: str | None) -> str:
    if source_href:
        return source_href
    for rel in ("self", "canonical"):
        for link in source_item.get("links", []):
            if link.get("rel") == rel and link.get("href"):
                return str(link["href"])
    raise InputError(
        f"source item '{source_item.get('id')}' has no 'self' or 'canonical' link; pass "
        "source_href (e.g. from the cube's item_hrefs) so the prediction can link to it."
    )


def _footprint(crs: CRS, transform: Affine, shape: tuple[int, int]) -> dict[str, Any]:
    west, south, east, north = array_bounds(shape[0], shape[1], transform)
    t = np.linspace(0.0, 1.0, _EDGE_POINTS + 1)[:-1]
    ring = (
        [(west + f * (east - west), south) for f in t]
        + [(east, south + f * (north - south)) for f in t]
        + [(east - f * (east - west), north) for f in t]
        + [(west, north - f * (north - south)) for f in t]
    )
    ring.append(ring[0])
    geom = {"type": "Polygon", "coordinates": [ring]}
    geom = dict(transform_geom(crs, "EPSG:4326", geom))
    rings = [
        [[round(float(x), _COORD_DIGITS), round(float(y), _COORD_DIGITS)] for x, y, *_ in r]
        for r in geom["coordinates"]
    ]
    return {"type": "Polygon", "coordinates": rings}


def prediction_item(
    pred_tif: Path,
    source_item: dict[str, Any],
    classes: Sequence[str],
    model_href: str | None,
    crs: str,
    transform: Sequence[float],
    shape: tuple[int, int],
    *,
    source_href: str | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The STAC item of a prediction COG, as a dict ready for :func:`write_json_atomic`.

    The item is ``<source id>-prediction``, with the source's datetime, a lon/lat footprint of
    the raster, the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``), one
    asset ``classification`` (``./<file>.tif``, COG, classification and file extensions) and
    ``derived_from`` links to the source item and, if given, the model's STAC item (as the MLM
    extension recommends for model outputs; told apart by their ``title``).

    Args:
        pred_tif: the written COG (read for ``file:size`` and ``file:checksum``); the item is
            meant to be written beside it.
        source_item: the source scene's STAC item as a dict.
        classes: class names, index = class value.
        model_href: href of the model's STAC item (``model/model-item.json``), or None.
        crs: CRS of the raster, e.g. ``"EPSG:32633"``.
        transform: the raster's affine transform (6 floats, rasterio order).
        shape: (height, width) of the raster.
        source_href: href of the source item; default: its ``self`` (else ``canonical``) link.
        model_name: the model's ``mlm:name``, recorded on the model link when given.

    Returns:
        The item as a JSON-serialisable dict (no self link; asset href relative).

    Raises:
        InputError: missing COG, a source item without id/datetime/href, bad class names,
            CRS or transform.
    """
    tif = Path(pred_tif)
    if not tif.is_file():
        raise InputError(f"prediction COG '{tif}' does not exist; write it with write_prediction.")
    source_id = source_item.get("id")
    if not source_id:
        raise InputError("source item has no 'id'; pass the STAC item the prediction comes from.")
    names = list(classes)
    bad = [n for n in names if not _CLASS_NAME.match(n)]
    if bad or len(set(names)) != len(names) or not 1 <= len(names) < NODATA_CLASS:
        raise InputError(
            f"classes {names} must be 1..254 unique names of letters, digits, '-' or '_' "
            f"(invalid: {bad}); fix labels.classes."
        )
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape {shape!r} of '{tif}' must be (height, width) >= 1.")
    crs_obj = _parse_crs(crs)
    affine = _affine(transform)
    props = source_item.get("properties", {})
    start, end = props.get("start_datetime"), props.get("end_datetime")
    if not props.get("datetime") and not (start and end):
        raise InputError(f"source item '{source_id}' has neither datetime nor start/end_datetime.")

    geometry = _footprint(crs_obj, affine, (int(shape[0]), int(shape[1])))
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    properties: dict[str, Any] = {
        k: props[k] for k in ("platform", "constellation", "instruments") if k in props
    }
    if start and end:
        properties.update(start_datetime=start, end_datetime=end)
    item = pystac.Item(
        id=f"{source_id}-prediction",
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        datetime=pystac.utils.str_to_datetime(props["datetime"]) if props.get("datetime") else None,
        properties=properties,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs_obj.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.code = None
        proj.wkt2 = crs_obj.to_wkt()
    proj.shape = [int(shape[0]), int(shape[1])]
    proj.transform = [float(v) for v in tuple(affine)[:6]]

    asset = pystac.Asset(
        href=f"./{tif.name}",
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title="Predicted class per pixel",
    )
    item.add_asset("classification", asset)
    ClassificationExtension.ext(asset, add_if_missing=True).classes = [
        *(Classification.create(value=i, name=n) for i, n in enumerate(names)),
        Classification.create(value=NODATA_CLASS, name="nodata", nodata=True),
    ]
    file_ext = FileExtension.ext(asset, add_if_missing=True)
    file_ext.size = tif.stat().st_size
    file_ext.checksum = "1220" + sha256_file(tif)  # multihash: sha2-256, 32 bytes

    item.add_link(
        pystac.Link(
            rel=pystac.RelType.DERIVED_FROM,
            target=_source_href(source_item, source_href),
            media_type=pystac.MediaType.GEOJSON,
            title=f"source scene {source_id}",
        )
    )
    if model_href:
        item.add_link(
            pystac.Link(
                rel=pystac.RelType.DERIVED_FROM,
                target=model_href,
                media_type=pystac.MediaType.GEOJSON,
                title="model",
                extra_fields={"mlm:name": model_name} if model_name else None,
            )
        )
    return item.to_dict(include_self_link=False, transform_hrefs=False)
