"""Whole-scene inference with ONNX Runtime and its outputs.

Sliding windows over a scene are blended into one class map (:func:`predict_scene` for a scene in
memory, :func:`predict_raster` for one streamed strip by strip from a reader into a writer with
bounded memory), written as a deterministic Cloud-Optimized GeoTIFF (:func:`write_prediction`, or
:class:`CogWriter` while streaming) and described by a STAC item that links back to its source
scene and model (:func:`prediction_item`), to be written with :func:`write_json_atomic`
(re-exported from :mod:`eoforge.storage`). ADR 0001 has the formats.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pystac
import rasterio
import rasterio.shutil
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_geom
from rasterio.windows import Window

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.gpu import ort_providers
from eoforge.onnx_safety import check_onnx_external_data
from eoforge.storage import sha256_file, staged_file, staging_path, write_json_atomic

__all__ = [
    "INPUT_NAME",
    "NODATA_CLASS",
    "OUTPUT_NAME",
    "ArrayReader",
    "CogWriter",
    "PredictionStats",
    "PredictionWriter",
    "RasterioReader",
    "SceneReader",
    "open_session",
    "predict_raster",
    "predict_scene",
    "predict_to_cog",
    "prediction_item",
    "session_options",
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
# Creation options shared by write_prediction and CogWriter, so both give the same bytes.
_COG_OPTIONS: dict[str, Any] = {
    "compress": "DEFLATE",
    "overview_resampling": "MODE",
    "blocksize": 512,
    "bigtiff": "IF_SAFER",
    "num_threads": 1,
}


# --------------------------------------------------------------------------- model session


def session_options(threads: int | None = None, *, spinning: bool = False) -> ort.SessionOptions:
    """ONNX Runtime session options tuned for batched window inference.

    All graph optimisations (constant folding, Conv+BatchNorm+ReLU fusion, the CPU's blocked
    NCHWc layout), ``threads`` intra-op threads and a single inter-op thread (the graph is one
    sequential chain), the memory arena and memory-pattern planning on (windows have one shape,
    so buffers are planned once and reused), and no busy-waiting between operators by default:
    a spinning pool wins a little on an idle machine but steals cores from the reader, the
    writer and other workers on a shared one (``benchmarks/inference.py`` measures both).

    Args:
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        spinning: let idle intra-op threads spin instead of sleeping.

    Returns:
        The options, ready for :class:`onnxruntime.InferenceSession`.

    Raises:
        InputError: ``threads`` is below 1.
    """
    if threads is not None and threads < 1:
        raise InputError(f"threads={threads} must be >= 1 (or None for all cores).")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def open_session(
    onnx_path: Path,
    threads: int | None = None,
    *,
    prefer_gpu: bool = True,
    spinning: bool = False,
) -> ort.InferenceSession:
    """Open an exported model for inference.

    CUDA is used first when this onnxruntime build offers it and a GPU is present (see
    :func:`eoforge.gpu.ort_providers`), the CPU otherwise. Options: :func:`session_options`.

    Args:
        onnx_path: the ``model.onnx`` written by the export stage.
        threads: intra-op threads (None: onnxruntime's default, all physical cores).
        prefer_gpu: use the CUDA execution provider when available.
        spinning: let idle intra-op threads busy-wait (see :func:`session_options`).

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
    check_onnx_external_data(path)  # external tensors only from the model's own folder
    opts = session_options(threads, spinning=spinning)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=ort_providers(prefer_gpu)
        )
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


class _BatchRunner:
    """Runs batches of windows through a session with IO binding.

    The input batch lives in one preallocated float32 buffer (:attr:`stack`) bound to the
    session without a copy; after the first run the logits are written straight into a
    preallocated output buffer, so a batch allocates nothing. With the CUDA provider the same
    binding makes onnxruntime copy the batch to the device and the logits back once per run.
    """

    def __init__(
        self, session: Any, capacity: int, channels: int, height: int, width: int, fixed: bool
    ) -> None:
        self.session = session
        self.capacity = capacity
        self.fixed = fixed  # a static batch dimension: always run `capacity` windows
        self.stack = np.zeros((capacity, channels, height, width), np.float32)
        self.binding = session.io_binding()
        self.out: npt.NDArray[np.float32] | None = None
        self.batches = 0

    def run(self, n: int) -> npt.NDArray[np.float32]:
        """Logits ``(n, K, h, w)`` of the first ``n`` windows in :attr:`stack` (a view)."""
        if self.fixed:
            self.stack[n:] = 0
        x = self.stack if self.fixed else self.stack[:n]
        self.binding.bind_cpu_input(INPUT_NAME, x)
        if self.out is None:
            self.binding.bind_output(OUTPUT_NAME, "cpu")
            self.session.run_with_iobinding(self.binding)
            logits = np.asarray(self.binding.copy_outputs_to_cpu()[0])
            self._check(logits, x.shape)
            self.out = np.empty((self.capacity, *logits.shape[1:]), np.float32)
            self.out[: len(x)] = logits
        else:
            out = self.out[: len(x)]
            self.binding.bind_output(
                OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data
            )
            self.session.run_with_iobinding(self.binding)
        self.batches += 1
        return self.out[:n]

    @staticmethod
    def _check(logits: npt.NDArray[Any], shape: tuple[int, ...]) -> None:
        if logits.ndim != 4 or logits.shape[0] != shape[0] or logits.shape[2:] != shape[2:]:
            raise InputError(
                f"the ONNX model returned logits of shape {logits.shape} for windows of shape "
                f"{shape}; it must return (N, classes, h, w) at the input resolution."
            )
        if not 1 <= logits.shape[1] <= NODATA_CLASS:
            raise InputError(
                f"the ONNX model returns {logits.shape[1]} classes; 1..255 are supported."
            )
        if logits.dtype != np.float32:
            raise InputError(
                f"the ONNX model returns {logits.dtype} logits; it must return float32."
            )


# --------------------------------------------------------------------------- readers / writers


class SceneReader(Protocol):
    """A scene that can be read strip by strip: what :func:`predict_raster` consumes."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width) of the scene."""
        ...

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of every band: ``(bands, bottom - top, width)`` raw DN."""
        ...


class PredictionWriter(Protocol):
    """A sink for finished class rows: what :func:`predict_raster` writes to."""

    def write_rows(self, top: int, rows: npt.NDArray[np.uint8]) -> None:
        """Store class rows ``[top, top + len(rows))``; rows arrive in order, exactly once."""
        ...


class ArrayReader:
    """Reads strips of an array-like scene: numpy, zarr, dask or xarray, lazily.

    Args:
        bands: a ``(C, H, W)`` array-like, or a sequence of ``C`` ``(H, W)`` array-likes (e.g.
            ``[ds[b].isel(time=t) for b in bands]`` of a lazily opened cube). Only the rows
            asked for are read (``np.asarray(a[top:bottom])``).
    """

    def __init__(self, bands: Any) -> None:
        if isinstance(bands, (list, tuple)):
            self._bands: list[Any] | None = list(bands)
            self._array: Any = None
            shapes = {tuple(int(d) for d in b.shape) for b in self._bands}
            if not self._bands or len(shapes) != 1 or len(next(iter(shapes))) != 2:
                raise InputError(
                    f"ArrayReader needs C >= 1 bands of one (H, W) shape, got shapes {shapes}."
                )
            h, w = next(iter(shapes))
            self._shape = (len(self._bands), h, w)
        else:
            self._bands = None
            self._array = bands
            shape = tuple(int(d) for d in getattr(bands, "shape", ()))
            if len(shape) != 3 or min(shape) < 1:
                raise InputError(
                    f"ArrayReader needs a non-empty (C, H, W) array, got shape {shape}."
                )
            self._shape = (shape[0], shape[1], shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width)."""
        return self._shape

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of every band."""
        if self._bands is not None:
            return np.stack([np.asarray(b[top:bottom]) for b in self._bands])
        return np.asarray(self._array[:, top:bottom])


class RasterioReader:
    """Reads strips of a raster file (GeoTIFF / COG, local or ``/vsis3/``) opened with rasterio.

    Args:
        dataset: an open rasterio dataset (the caller owns and closes it).
        indexes: 1-based band indexes in model band order (None: every band in file order).
    """

    def __init__(self, dataset: Any, indexes: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indexes = list(indexes) if indexes is not None else list(dataset.indexes)
        bad = [i for i in self.indexes if not 1 <= i <= dataset.count]
        if bad or not self.indexes:
            raise InputError(
                f"band indexes {self.indexes} do not fit '{dataset.name}' with {dataset.count} "
                "band(s); pass 1-based indexes in the model's band order."
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width)."""
        return (len(self.indexes), int(self.dataset.height), int(self.dataset.width))

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of the selected bands."""
        window = Window(0, top, self.dataset.width, bottom - top)
        return np.asarray(self.dataset.read(self.indexes, window=window))


class _ArrayWriter:
    """Collects class rows into an in-memory map (what :func:`predict_scene` returns)."""

    def __init__(self, height: int, width: int) -> None:
        self.out = np.full((height, width), NODATA_CLASS, np.uint8)

    def write_rows(self, top: int, rows: npt.NDArray[np.uint8]) -> None:
        self.out[top : top + len(rows)] = rows


class CogWriter:
    """Writes class rows as they come into a Cloud-Optimized GeoTIFF, with bounded memory.

    Rows go to a hidden striped GeoTIFF next to ``out_tif`` (``.staging-*``, so a killed run
    leaves nothing that reads as valid and :func:`eoforge.storage.clean_stale_staging` removes
    it); on a successful exit GDAL copies it into a COG with the same options as
    :func:`write_prediction` (the same class map gives the same bytes either way), which is
    renamed onto ``out_tif``. Use as a context manager; :attr:`sha256` is set on exit.

    Args:
        out_tif: destination, e.g. ``DIR/predictions/<item_id>.tif``.
        crs: CRS of the scene grid, e.g. ``"EPSG:32633"``.
        transform: the grid's affine transform, 6 floats (rasterio order a, b, c, d, e, f).
        shape: (height, width) of the scene.
    """

    def __init__(
        self, out_tif: Path, crs: str, transform: Sequence[float], shape: tuple[int, int]
    ) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise InputError(f"shape {shape!r} of '{out_tif}' must be (height, width) >= 1.")
        self.out_tif = Path(out_tif)
        self.crs = _parse_crs(crs)
        self.transform = _affine(transform)
        self.shape = (int(shape[0]), int(shape[1]))
        self.sha256: str | None = None
        self._rows_written = 0
        self._dst: Any = None
        self._env: Any = None
        self._tmp = staging_path(self.out_tif)  # owner-tagged: only a dead writer's is reaped

    def __enter__(self) -> CogWriter:
        self.out_tif.parent.mkdir(parents=True, exist_ok=True)
        self._env = rasterio.Env(GDAL_PAM_ENABLED="NO")
        self._env.__enter__()
        self._dst = rasterio.open(
            self._tmp,
            "w",
            driver="GTiff",
            width=self.shape[1],
            height=self.shape[0],
            count=1,
            dtype="uint8",
            crs=self.crs,
            transform=self.transform,
            nodata=NODATA_CLASS,
            tiled=False,
            blockysize=16,  # striped: whole rows append without read-modify-write of tiles
            bigtiff="IF_SAFER",
        )
        return self

    def write_rows(self, top: int, rows: npt.NDArray[np.uint8]) -> None:
        """Write class rows ``[top, top + len(rows))`` (in order)."""
        if self._dst is None:
            raise InputError("CogWriter.write_rows called outside its `with` block.")
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.shape[1]:
            raise InputError(
                f"rows for '{self.out_tif}' must be uint8 (n, {self.shape[1]}), got {rows.dtype} "
                f"{rows.shape}."
            )
        if top != self._rows_written or top + len(rows) > self.shape[0]:
            raise InputError(
                f"rows {top}..{top + len(rows)} for '{self.out_tif}' are out of order: "
                f"{self._rows_written} of {self.shape[0]} rows written so far."
            )
        window = Window(0, top, self.shape[1], len(rows))
        self._dst.write(rows, 1, window=window)
        self._rows_written += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._dst is not None:
                self._dst.close()
            if exc_type is None:
                if self._rows_written != self.shape[0]:
                    raise InputError(
                        f"only {self._rows_written} of {self.shape[0]} rows were written to "
                        f"'{self.out_tif}'; the prediction is incomplete."
                    )
                with staged_file(self.out_tif) as staged:
                    rasterio.shutil.copy(self._tmp, staged, driver="COG", **_COG_OPTIONS)
                    self.sha256 = sha256_file(staged)
        finally:
            self._dst = None
            self._tmp.unlink(missing_ok=True)
            if self._env is not None:
                self._env.__exit__(exc_type, exc, tb)
                self._env = None


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


def _softmax_(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Softmax over axis 1, in place (the batch runner's output buffer is reused)."""
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=logits)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


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


class _RowSource:
    """The input rows a window row needs, read once each, padded like the whole scene would be.

    Keeps a rolling buffer of at most one window of rows; also tracks the per-pixel validity
    of the rows read but not yet finalised, so nodata can be masked when rows are written.
    """

    def __init__(self, reader: SceneReader, nodata: float, edge_y: int, padded_w: int) -> None:
        self.reader = reader
        self.channels, self.height, self.width = reader.shape
        self.nodata = nodata
        self.edge_y = edge_y
        self.padded_w = padded_w
        self.buf: npt.NDArray[Any] | None = None  # rows [buf_top, buf_top + len) of the scene
        self.buf_top = 0
        self.valid_rows = np.zeros((0, self.width), bool)  # rows [valid_top, read_bottom)
        self.valid_top = 0
        self.read_bottom = 0

    def _read(self, top: int, bottom: int) -> npt.NDArray[Any]:
        rows = self.reader.read_rows(top, bottom)
        expected = (self.channels, bottom - top, self.width)
        if rows.shape != expected:
            raise InputError(
                f"the scene reader returned rows of shape {rows.shape} for rows {top}..{bottom}; "
                f"expected {expected}."
            )
        if not (np.issubdtype(rows.dtype, np.integer) or np.issubdtype(rows.dtype, np.floating)):
            raise InputError(f"bands must be numeric (uint16 DN), got {rows.dtype}.")
        valid = np.ones(rows.shape[1:], bool)
        for band in rows:  # band by band: no (C, rows, W) boolean temporary
            valid &= band != self.nodata
        self.valid_rows = np.concatenate([self.valid_rows, valid])
        self.read_bottom = bottom
        if self.padded_w > self.width:
            rows = np.pad(rows, ((0, 0), (0, 0), (0, self.padded_w - self.width)), mode="reflect")
        return rows

    def strip(self, top: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """Input rows ``[top, top + edge_y)`` (C, edge_y, padded_w) and their validity."""
        if self.height < self.edge_y:  # one window row over a short scene: pad by reflection
            if self.buf is None:
                rows = self._read(0, self.height)
                pad = ((0, 0), (0, self.edge_y - self.height), (0, 0))
                self.buf = np.pad(rows, pad, mode="reflect")
            strip: npt.NDArray[Any] | None = self.buf
        else:
            bottom = top + self.edge_y
            keep = self.buf[:, top - self.buf_top :] if self.buf is not None else None
            start = max(top, self.read_bottom)
            fresh = self._read(start, bottom) if start < bottom else None
            if keep is None or keep.shape[1] == 0:
                strip = fresh
            elif fresh is None:
                strip = keep
            else:
                strip = np.concatenate([keep, fresh], axis=1)
            self.buf, self.buf_top = strip, top
        assert strip is not None
        valid = np.ones(strip.shape[1:], bool)
        for band in strip:
            valid &= band != self.nodata
        return strip, valid

    def take_valid(self, rows: int) -> npt.NDArray[np.bool_]:
        """Validity of the next ``rows`` unfinished rows (consumed)."""
        out = self.valid_rows[:rows]
        self.valid_rows = self.valid_rows[rows:]
        self.valid_top += rows
        return out


def _stream(
    session: Any, reader: SceneReader, spec: InferSpec, nodata: float, stats: dict[str, int]
) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """Finished class rows ``(top, rows)`` of the scene, in order (see :func:`predict_raster`)."""
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
    weights_y = _axis_weights(ys, edge_y)
    weights_x = _axis_weights(xs, edge_x)
    runner = _BatchRunner(
        session, io.batch or spec.batch_size, channels, edge_y, edge_x, io.batch is not None
    )
    source = _RowSource(reader, nodata, edge_y, padded_w)
    acc: npt.NDArray[np.float32] | None = None  # blended probabilities of rows [done, ...)
    done = 0
    pending: list[tuple[int, int]] = []

    def run_pending() -> None:
        nonlocal acc
        logits = runner.run(len(pending))
        if not np.isfinite(logits).all():
            raise InputError("the ONNX model returned non-finite logits; retrain or re-export it.")
        probs = _softmax_(logits)
        if acc is None:
            acc = np.zeros((probs.shape[1], 0, padded_w), np.float32)
        for k, (i, j) in enumerate(pending):
            top, bottom = ys[i] - done, ys[i] + edge_y - done
            if bottom > acc.shape[1]:
                acc = _grow_rows(acc, bottom)
            probs[k] *= weights_y[i][:, None] * weights_x[j][None, :]
            acc[:, top:bottom, xs[j] : xs[j] + edge_x] += probs[k]
        stats["windows_run"] += len(pending)
        stats["max_buffered_rows"] = max(
            stats["max_buffered_rows"], acc.shape[1] + edge_y + len(source.valid_rows)
        )
        pending.clear()

    def finish(until: int) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        """Rows [done, until): no later window reaches them."""
        nonlocal acc, done
        ready = min(until, height) - done
        if ready <= 0:
            return
        valid = source.take_valid(ready)
        if acc is None:
            rows = np.full((ready, width), NODATA_CLASS, np.uint8)
        else:
            if ready > acc.shape[1]:
                acc = _grow_rows(acc, ready)
            rows = _argmax_classes(acc[:, :ready, :width])
            acc = acc[:, ready:]
        rows[~valid] = NODATA_CLASS
        yield done, rows
        done += ready

    for i, y in enumerate(ys):
        strip, valid = source.strip(y)
        for j, x in enumerate(xs):
            if not valid[:, x : x + edge_x].any():
                stats["windows_skipped"] += 1
                continue
            runner.stack[len(pending)] = strip[:, :, x : x + edge_x]
            pending.append((i, j))
            if len(pending) == runner.capacity:
                run_pending()
        # rows above the first window still to be blended in are complete
        yield from finish(
            ys[pending[0][0]] if pending else (ys[i + 1] if i + 1 < len(ys) else padded_h)
        )
    if pending:
        run_pending()
    yield from finish(padded_h)
    stats["batches"] = runner.batches


def predict_raster(
    session: ort.InferenceSession,
    reader: SceneReader,
    spec: InferSpec,
    writer: PredictionWriter,
    nodata: float = 0,
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

    Returns:
        :class:`PredictionStats`.

    Raises:
        InputError: bad ``spec`` or rows, or a model that does not fit them (channel count,
            static window size) or returns unusable logits.
    """
    stats = {"windows_run": 0, "windows_skipped": 0, "batches": 0, "max_buffered_rows": 0}
    for top, rows in _stream(session, reader, spec, nodata, stats):
        writer.write_rows(top, rows)
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
) -> tuple[str, PredictionStats]:
    """Stream a scene through the model into a COG (:func:`predict_raster` + :class:`CogWriter`).

    Returns:
        (sha256 of the COG, :class:`PredictionStats`).
    """
    _, height, width = reader.shape
    with CogWriter(Path(out_tif), crs, transform, (height, width)) as writer:
        stats = predict_raster(session, reader, spec, writer, nodata)
    assert writer.sha256 is not None
    return writer.sha256, stats


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
        **_COG_OPTIONS,
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
