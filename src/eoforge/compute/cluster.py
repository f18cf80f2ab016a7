"""Scale-out on dask.distributed: where the cluster is, a client for it, odc-stac loads in chunks.

A :class:`DaskSpec` names an existing scheduler (``tcp://...``: dask-kubernetes, Coiled, a
``dask scheduler`` process) or, by default, describes a :class:`distributed.LocalCluster` of
worker *processes* on this machine. :func:`dask_client` yields a client for either;
:func:`load_tile_chunked` builds the lazy cube of a tile in spatial chunks, so a large scene
is read and written chunk by chunk on the workers instead of as one array per time slice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from eoforge.compute.cpus import ENV as CPUS_ENV
from eoforge.cube.build import load_tile
from eoforge.errors import EoforgeError, InputError, TransientError
from eoforge.io.atomic import staged_dir

if TYPE_CHECKING:
    import xarray as xr
    from distributed import Client

__all__ = [
    "DEFAULT_CHUNKS",
    "DaskSpec",
    "compute_error",
    "dask_client",
    "load_tile_chunked",
    "write_tile_zarr",
    "zarr_chunk_encoding",
]

#: odc-stac chunks: one time slice, 2048 x 2048 px (8 MiB of uint16 per band and chunk, ~30
#: chunks for a 10 m Sentinel-2 tile), small enough for many per worker, big enough to keep
#: the graph at a few hundred tasks per scene.
DEFAULT_CHUNKS: dict[str, int] = {"time": 1, "y": 2048, "x": 2048}


class DaskSpec(BaseModel):
    """Which Dask cluster runs scene-level work, and how work is cut for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheduler_address: str | None = Field(
        default=None,
        description=(
            "Address of a running Dask scheduler (e.g. 'tcp://dask-scheduler:8786'). "
            "None starts a LocalCluster on this machine."
        ),
    )
    n_workers: int = Field(default=2, gt=0, description="LocalCluster worker processes.")
    threads_per_worker: int = Field(default=1, gt=0, description="Threads per LocalCluster worker.")
    processes: bool = Field(
        default=True,
        description="LocalCluster workers as processes (GDAL and numpy stay parallel).",
    )
    memory_limit: str | None = Field(
        default=None,
        description="Memory limit per LocalCluster worker ('4GiB'); None: Dask's 'auto'.",
    )
    connect_timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout to reach a scheduler."
    )
    chunks: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_CHUNKS),
        description="odc-stac chunks for tile loads on the cluster (time, y, x).",
    )
    scenes_per_task: int = Field(
        default=1,
        gt=0,
        description=(
            "Scenes handled by one task. Keep each task at seconds of work: raise it when "
            "scenes are small or counted in tens of thousands, so the graph stays small."
        ),
    )
    scene_scheduler: Literal["synchronous", "threads"] = Field(
        default="threads",
        description=(
            "Dask scheduler *inside* one scene task: 'threads' reads the scene's bands in "
            "parallel (I/O-bound, GDAL releases the GIL), 'synchronous' reads them one by one."
        ),
    )

    @field_validator("chunks")
    @classmethod
    def _known_dims(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = set(v) - {"time", "y", "x"}
        if unknown:
            raise ValueError(f"chunks may only name time, y and x, not {sorted(unknown)}")
        if any(size < 1 for size in v.values()):
            raise ValueError(f"chunk sizes must be >= 1, got {v}")
        return v

    def local_cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`distributed.LocalCluster` for this spec."""
        kwargs: dict[str, Any] = {
            "n_workers": self.n_workers,
            "threads_per_worker": self.threads_per_worker,
            "processes": self.processes,
            "dashboard_address": None,
            "silence_logs": logging.ERROR,
        }
        if self.memory_limit is not None:
            kwargs["memory_limit"] = self.memory_limit
        if self.processes:
            # each worker process keeps to its share of the CPUs: the inference runtimes, GDAL
            # and the host threads size themselves from it (eoforge.compute.cpus); two workers
            # predicting on 2 cores: 16.6 vs 14.4 scenes/s at 2 threads each (benchmarks.cpu_quota)
            kwargs["env"] = {CPUS_ENV: str(self.threads_per_worker)}
        return kwargs


@contextlib.contextmanager
def dask_client(spec: DaskSpec) -> Iterator[Client]:
    """Yield a client of the cluster ``spec`` names, closing what this call started.

    Args:
        spec: a scheduler address, or the shape of a LocalCluster to start.

    Raises:
        TransientError: the scheduler at ``spec.scheduler_address`` cannot be reached.
    """
    from distributed import Client, LocalCluster

    if spec.scheduler_address is not None:
        try:
            client = Client(
                spec.scheduler_address, timeout=spec.connect_timeout_s, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise TransientError(
                f"Dask scheduler {spec.scheduler_address} is unreachable within "
                f"{spec.connect_timeout_s} s ({exc}); check the address and that the "
                "scheduler runs, then retry."
            ) from exc
        with client:
            yield client
        return
    with (
        LocalCluster(**spec.local_cluster_kwargs()) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def load_tile_chunked(
    items: Sequence[dict[str, Any]],
    variables: Sequence[str],
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """Like :func:`eoforge.cube.build.load_tile`, with pixels lazily read in ``chunks``.

    :func:`eoforge.cube.build.load_tile` reads one chunk per whole time slice; for large scenes that is
    one 240 MB array per band and date (10 m Sentinel-2). Here odc-stac splits each slice into
    ``chunks`` (default :data:`DEFAULT_CHUNKS`), which the cluster reads in parallel. The
    attributes (crs, transform, item ids and hrefs) and the coordinates are those of
    :func:`~eoforge.cube.build.load_tile`, so both paths write identical cubes.

    Raises:
        InputError: the items cannot be loaded together (see :func:`~eoforge.cube.build.load_tile`).
    """
    import odc.stac
    import pystac

    reference = load_tile(items, variables)  # metadata, checks and attrs; no pixels read
    py_items = [pystac.Item.from_dict(dict(it), preserve_dict=True) for it in items]
    try:
        ds = odc.stac.load(
            py_items,
            bands=list(variables),
            chunks=dict(chunks if chunks is not None else DEFAULT_CHUNKS),
            groupby="solar_day",
            fail_on_error=True,
        )
    except ValueError as exc:  # pragma: no cover - load_tile raised first for the same items
        raise InputError(f"odc-stac cannot load items {[i['id'] for i in items]}: {exc}") from exc
    ds.attrs.update(reference.attrs)
    return ds


def zarr_chunk_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Zarr encoding whose chunks are the first dask chunk of each variable.

    With regular dask chunks every dask task then writes whole Zarr chunks of its own, which is
    what makes parallel writes safe.
    """
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        chunks = var.chunks
        if chunks is not None:
            encoding[str(name)] = {"chunks": tuple(int(c[0]) for c in chunks)}
    return encoding


def compute_error(exc: Exception, what: str) -> EoforgeError | None:
    """The eoforge error for a failed read/write computation, or None to re-raise ``exc``.

    Dask hands back a bare ``Exception`` (its repr as message) for a remote error it cannot
    unpickle, as some rasterio errors are: those count as read failures too. The error is
    returned to be raised outside the ``except`` block, so it carries no unpicklable context.
    """
    if not isinstance(exc, OSError | RuntimeError) and type(exc) is not Exception:
        return None
    if "No such file or directory" in str(exc):
        return InputError(
            f"a source raster for {what} does not exist ({exc}); fix the asset hrefs of the "
            "STAC items or restore the files."
        )
    return TransientError(f"reading or writing {what} failed ({exc}); retry later.")


def write_tile_zarr(ds: xr.Dataset, out: Path, client: Client | None = None) -> Path:
    """Write a tile dataset as one Zarr v3 store, atomically, computing on ``client``.

    Zarr chunks follow the dataset's dask chunks, so every dask task writes its own Zarr
    chunks and workers never write the same object.

    Args:
        ds: from :func:`load_tile_chunked` (regular chunks along each dimension).
        out: destination store (replaced only when the write succeeded).
        client: cluster to compute on; None uses the current Dask scheduler.

    Returns:
        ``out``.

    Raises:
        InputError: a source raster does not exist.
        TransientError: reading a source raster or writing the store failed.
    """
    ds = ds.drop_vars("spatial_ref", errors="ignore")
    encoding = zarr_chunk_encoding(ds)
    with staged_dir(Path(out)) as staging:
        delayed = ds.to_zarr(
            staging,
            mode="w-",
            zarr_format=3,
            consolidated=False,
            encoding=encoding,
            compute=False,
        )
        error: EoforgeError | None = None
        try:
            if client is not None:
                client.compute(delayed, sync=True)
            else:
                delayed.compute()
        except Exception as exc:
            error = compute_error(exc, f"'{out}'")
            if error is None:
                raise
        if error is not None:
            raise error
    return Path(out)
