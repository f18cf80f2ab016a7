"""Whole-scene inference with ONNX Runtime and its outputs.

Sliding windows over a scene are blended into one class map (:func:`predict_scene` for a scene in
memory, :func:`predict_raster` for one streamed strip by strip from a reader into a writer with
bounded memory), written as a deterministic Cloud-Optimized GeoTIFF (:func:`write_prediction`, or
:class:`CogWriter` while streaming) and described by a STAC item that links back to its source
scene and model (:func:`~eoforge.inference.item.prediction_item`), to be written with
:func:`~eoforge.io.atomic.write_json_atomic`. ADR 0001 has the formats.

This module is the streaming predictor; the rest lives in :mod:`eoforge.inference.session`,
:mod:`eoforge.inference.scene_io`, :mod:`eoforge.inference.windows`, :mod:`eoforge.inference.cog` and
:mod:`eoforge.inference.item`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.host_threads import over_row_bands
from eoforge.inference.openvino_session import OPENVINO_CPU
from eoforge.inference.scene_io import (
    NODATA_CLASS,
    ArrayReader,
    PredictionWriter,
    SceneReader,
    _ArrayWriter,
)
from eoforge.inference.session import (
    _BatchRunner,
    _model_io,
)
from eoforge.inference.windows import (
    RawRows,
    RowsSink,
    ScoresSink,
    _argmax_classes,
    _axis_plan,
    _axis_weights,
    _BlendBuffer,
    _BlendPlan,
    _RowSource,
)

__all__ = [
    "PredictionStats",
    "predict_raster",
    "predict_scene",
    "predict_to_cog",
]


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


@dataclass(frozen=True)
class PredictionStats:
    """What one :func:`predict_raster` call did."""

    pixels: int
    """Pixels of the scene (height * width)."""
    windows_run: int
    """Windows sent to the model."""
    windows_skipped: int
    """Windows without a single valid input pixel (never run)."""
    batches: int
    """Model runs."""
    max_buffered_rows: int
    """Most scene rows held at once (input strip + validity + blend accumulator, each about
    one to two window heights): memory is this times the scene width, whatever its height."""
    window_pixels: int = 0
    """Pixels sent to the model (the windows run times their area): over :attr:`pixels`, what
    the overlap costs (a 10980 px tile at the defaults: 1.21)."""
    model_seconds: float | None = None
    """Wall time of the model's runs (the session calls alone, without reading, blending and
    writing); None where the model runs asynchronously on a device (torch on a GPU)."""


def _pipelined(session: Any, spec: InferSpec) -> bool:
    """Whether to run the model in a worker thread, overlapped with blending (see
    :attr:`InferSpec.pipelined`): by default only when the session runs on a GPU."""
    if spec.pipelined is not None:
        return spec.pipelined
    providers = session.get_providers() if hasattr(session, "get_providers") else []
    return bool(providers) and providers[0] not in ("CPUExecutionProvider", OPENVINO_CPU)


def _stream(
    session: Any,
    reader: SceneReader,
    spec: InferSpec,
    nodata: float,
    stats: dict[str, Any],
    scores_sink: ScoresSink | None = None,
    raw: RawRows | None = None,
) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """Finished class rows ``(top, rows)`` of the scene, in order (see :func:`predict_raster`);
    ``scores_sink`` also gets the blended scores of those rows, before they are yielded, and
    ``raw`` keeps the input rows read until their class rows are."""
    _check_spec(spec)
    io = _model_io(session, where="the ONNX session")
    channels, height, width = reader.shape
    if min(channels, height, width) < 1:
        raise InputError(f"the scene must be a non-empty (C, H, W) raster, got {reader.shape}.")
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
    plan = _BlendPlan.of(_axis_weights(ys, edge_y), _axis_weights(xs, edge_x))
    capacity = io.batch or spec.batch_size
    if getattr(session, "blend_on_device", False):  # a TorchSession on a GPU: ADR 0008
        from eoforge.inference.device_blend import stream_on_device

        source = _RowSource(reader, nodata, edge_y, padded_w, raw)
        yield from stream_on_device(
            session, source, plan, ys, xs, (edge_y, edge_x), capacity, stats, scores_sink
        )
        return
    pipelined = _pipelined(session, spec)
    # two runners when pipelined: one fills its batch while the other's runs on the worker
    runners = [
        _BatchRunner.take(session, capacity, channels, edge_y, edge_x, io.batch is not None)
        for _ in range(2 if pipelined else 1)
    ]
    worker = ThreadPoolExecutor(1, thread_name_prefix="eoforge-ort") if pipelined else None
    source = _RowSource(reader, nodata, edge_y, padded_w, raw)
    acc: _BlendBuffer | None = None  # blended probabilities of rows [done, ...)
    done = 0
    cur = 0  # the runner whose stack is being filled
    pending: list[tuple[int, int]] = []  # windows in runners[cur].stack
    inflight: tuple[Future[npt.NDArray[np.float32]], list[tuple[int, int]]] | None = None

    def blend(probs: npt.NDArray[np.float32], windows: list[tuple[int, int]]) -> None:
        """Add a batch's weighted probabilities (from :meth:`_BatchRunner.run`) into the blend."""
        nonlocal acc
        if acc is None:
            # rows [done, bottom of the last window): at most one step + one window, 2 edges
            acc = _BlendBuffer(probs.shape[1], padded_w, min(2 * edge_y, padded_h))
        for k, (i, j) in enumerate(windows):
            top = ys[i] - done
            region = acc.region(top, top + edge_y)[:, :, xs[j] : xs[j] + edge_x]

            def add(rows: slice, region: Any = region, window: Any = probs[k]) -> None:
                np.add(region[:, rows], window[:, rows], out=region[:, rows])

            over_row_bands(add, edge_y)  # bands of rows on the host threads
        stats["windows_run"] += len(windows)
        stats["window_pixels"] += len(windows) * edge_y * edge_x
        stats["max_buffered_rows"] = max(
            stats["max_buffered_rows"], acc.rows + edge_y + len(source.valid_rows)
        )

    def drain() -> None:
        """Blend the batch on the worker, if any (waiting for it)."""
        nonlocal inflight
        if inflight is not None:
            future, windows = inflight
            inflight = None
            blend(future.result(), windows)

    def run_pending() -> None:
        nonlocal inflight, cur
        windows = pending.copy()
        pending.clear()
        runner = runners[cur]
        if worker is None:
            blend(runner.run(windows, plan), windows)
            return
        # the model runs this batch while the previous one is blended here, in batch order
        future = worker.submit(runner.run, windows, plan)
        drain()
        inflight = (future, windows)
        cur = 1 - cur

    def first_unblended(next_row: int) -> int:
        """Top of the first window not blended yet (in flight, pending or still to come)."""
        if inflight is not None:
            return ys[inflight[1][0][0]]
        if pending:
            return ys[pending[0][0]]
        return ys[next_row] if next_row < len(ys) else padded_h

    def finish(until: int) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        """Rows [done, until): no later window reaches them."""
        nonlocal acc, done
        ready = min(until, height) - done
        if ready <= 0:
            return
        valid = source.take_valid(ready)
        if acc is None:
            rows = np.full((ready, width), NODATA_CLASS, np.uint8)
            if scores_sink is not None:
                scores_sink(done, np.zeros((1, ready, width), np.float32), valid)
        else:
            scores = acc.region(0, ready)[:, :, :width]
            rows = _argmax_classes(scores)
            if scores_sink is not None:
                scores_sink(done, scores, valid)
            acc.release(ready)
        rows[~valid] = NODATA_CLASS
        yield done, rows
        done += ready

    try:
        for i, y in enumerate(ys):
            strip, valid = source.strip(y)
            for j, x in enumerate(xs):
                if not valid[:, x : x + edge_x].any():
                    stats["windows_skipped"] += 1
                    continue
                runners[cur].stack[len(pending)] = strip[:, :, x : x + edge_x]
                pending.append((i, j))
                if len(pending) == capacity:
                    run_pending()
            # rows above the first window still to be blended in are complete
            yield from finish(first_unblended(i + 1))
        if pending:
            run_pending()
        drain()
        yield from finish(padded_h)
    finally:
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        for runner in runners:  # nothing runs on them now: their buffers serve the next call
            runner.give_back()
    stats["batches"] = sum(r.batches for r in runners)
    stats["model_seconds"] = sum(r.model_seconds for r in runners)


def predict_raster(
    session: ort.InferenceSession,
    reader: SceneReader,
    spec: InferSpec,
    writer: PredictionWriter,
    nodata: float = 0,
    *,
    uncertainty: PredictionWriter | None = None,
    rows_sink: RowsSink | None = None,
) -> PredictionStats:
    """Predict a scene of any size strip by strip, with memory bounded by the window, not the scene.

    Windows are taken row of windows by row of windows: each input row is read once (a rolling
    buffer of one window height), windows are batched, their softmax probabilities blended with
    a separable linear taper, and every class row is handed to ``writer`` as soon as no later
    window can touch it. Memory holds about two window heights of rows (input strip + blend
    accumulator) times the scene width, whatever the height; windows without a single valid
    pixel are skipped. The result is identical to :func:`predict_scene` on the whole array.

    Args:
        session: from :func:`open_session` (input ``image`` float32 (N, C, h, w) raw DN, output
            ``logits`` (N, K, h, w)).
        reader: the scene, e.g. :class:`ArrayReader` over a lazily opened cube slice or
            :class:`RasterioReader` over a COG.
        spec: window, overlap and batch size.
        writer: receives uint8 class rows in order, e.g. a :class:`CogWriter`.
        nodata: input value marking missing data (class :data:`NODATA_CLASS` where any band has it).
        uncertainty: if given, receives ``(2, n, W)`` uint8 rows of entropy and margin, in step
            with ``writer`` (e.g. an :class:`~eoforge.inference.uncertainty.UncertaintyWriter`).
        rows_sink: if given, receives the input rows as read and their class rows, in step
            with ``writer`` (e.g. a drift profile's
            :meth:`~eoforge.inference.drift.ProfileAccumulator.add`): the scene is read once.

    Returns:
        :class:`PredictionStats`.

    Raises:
        InputError: bad ``spec`` or rows, or a model that does not fit them (channel count,
            static window size) or returns unusable logits.
    """
    stats: dict[str, Any] = {
        "windows_run": 0,
        "windows_skipped": 0,
        "batches": 0,
        "max_buffered_rows": 0,
        "window_pixels": 0,
        "model_seconds": None,  # set by the host path; a device path runs asynchronously
    }
    sink: ScoresSink | None = None
    if uncertainty is not None:
        from eoforge.inference.uncertainty import uncertainty_rows

        def sink(top: int, scores: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]) -> None:
            uncertainty.write_rows(top, uncertainty_rows(scores, valid))

    raw = RawRows() if rows_sink is not None else None
    for top, rows in _stream(session, reader, spec, nodata, stats, sink, raw):
        writer.write_rows(top, rows)
        if rows_sink is not None and raw is not None:
            rows_sink(raw.take(rows.shape[0]), rows)
    _, height, width = reader.shape
    return PredictionStats(pixels=height * width, **stats)


def predict_scene(
    session: ort.InferenceSession,
    bands: npt.NDArray[Any],
    spec: InferSpec,
    nodata: int = 0,
) -> npt.NDArray[np.uint8]:
    """Predict a class for every pixel of a scene held in memory, with a sliding window.

    Windows of ``spec.window`` pixels overlapping by ``spec.overlap`` are run in batches of
    ``spec.batch_size``; their softmax probabilities are accumulated with a separable linear taper
    and the class is the argmax (see :func:`predict_raster`, which this runs over the array).

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
    if bands.ndim != 3 or min(bands.shape) < 1:
        raise InputError(
            f"predict_scene: bands must be a non-empty (C, H, W) array, got {bands.shape}."
        )
    if not (np.issubdtype(bands.dtype, np.integer) or np.issubdtype(bands.dtype, np.floating)):
        raise InputError(f"predict_scene: bands must be numeric (uint16 DN), got {bands.dtype}.")
    writer = _ArrayWriter(bands.shape[1], bands.shape[2])
    predict_raster(session, ArrayReader(bands), spec, writer, nodata)
    return writer.out


def predict_to_cog(
    session: ort.InferenceSession,
    reader: SceneReader,
    spec: InferSpec,
    out_tif: Path,
    crs: str,
    transform: Sequence[float],
    nodata: float = 0,
    *,
    uncertainty_tif: Path | None = None,
    rows_sink: RowsSink | None = None,
) -> tuple[str, PredictionStats]:
    """Stream a scene through the model into a COG (:func:`predict_raster` + :class:`CogWriter`),
    and its uncertainty into ``uncertainty_tif`` when given
    (:class:`~eoforge.inference.uncertainty.UncertaintyWriter`); ``rows_sink`` as in
    :func:`predict_raster`.

    Returns:
        (sha256 of the COG, :class:`PredictionStats`).
    """
    from contextlib import ExitStack

    # rasterio only where a file is written: predicting into arrays needs no GDAL
    from eoforge.inference.cog import CogWriter
    from eoforge.inference.uncertainty import UncertaintyWriter

    _, height, width = reader.shape
    with ExitStack() as stack:
        unc = None
        if uncertainty_tif is not None:
            unc = stack.enter_context(
                UncertaintyWriter(Path(uncertainty_tif), crs, transform, (height, width))
            )
        writer = stack.enter_context(CogWriter(Path(out_tif), crs, transform, (height, width)))
        stats = predict_raster(
            session, reader, spec, writer, nodata, uncertainty=unc, rows_sink=rows_sink
        )
    assert writer.sha256 is not None
    return writer.sha256, stats
