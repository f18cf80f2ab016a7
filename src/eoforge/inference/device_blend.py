"""The predictor's blend held on the torch device (ADR 0008): for a
:class:`~eoforge.inference.torch_session.TorchSession` on a GPU.

The host-side predictor (:func:`eoforge.inference.predict.predict_raster`) adds every window's
weighted probabilities into a host accumulator; on a GPU that host work, not the network, sets
the speed (the network alone runs 10-30x faster than the whole scene did). Here the same
windows, weights and order run with the strip, the accumulator and the argmax on the device:
the host reads rows and their validity (:class:`~eoforge.inference.windows._RowSource`), uploads
each input strip once, and gets back finished uint8 class rows (and the blended scores only
when a sink such as the uncertainty writer asks for them). Rows are finished one window row
late, so the device runs window row ``i`` while the host reads row ``i + 1`` and writes the
rows before ``i``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from eoforge.errors import InputError
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.inference.torch_session import TorchSession
from eoforge.inference.windows import ScoresSink, _BlendPlan, _RowSource

__all__ = ["stream_on_device"]


def _strip_to_device(strip: npt.NDArray[Any], device: torch.device) -> torch.Tensor:
    """An input strip ``(C, rows, W)`` as float32 on ``device``, uploaded in its own dtype
    (uint16 DN: half the bytes of float32; torch has no uint16 arithmetic, so the bits travel
    as int16 and are widened there)."""
    if strip.dtype == np.uint16:
        bits = torch.from_numpy(np.ascontiguousarray(strip).view(np.int16)).to(device)
        return bits.to(torch.int32).bitwise_and_(0xFFFF).float()
    if strip.dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        return torch.from_numpy(np.ascontiguousarray(strip)).to(device).float()
    return torch.from_numpy(strip.astype(np.float32)).to(device)


def _with_rows(acc: torch.Tensor, rows: int) -> torch.Tensor:
    """``acc`` ``(K, n, W)`` extended with zero rows to at least ``rows``."""
    if rows <= acc.shape[1]:
        return acc
    return torch.cat([acc, acc.new_zeros((acc.shape[0], rows - acc.shape[1], acc.shape[2]))], 1)


def _check_finite(finite: torch.Tensor) -> None:
    if not bool(finite):
        raise InputError("the model returned non-finite logits; retrain or re-export it.")


def stream_on_device(
    session: TorchSession,
    source: _RowSource,
    plan: _BlendPlan,
    ys: list[int],
    xs: list[int],
    edges: tuple[int, int],
    capacity: int,
    stats: dict[str, Any],
    scores_sink: ScoresSink | None = None,
) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """Finished class rows ``(top, rows)`` of ``source``'s scene, in order, blended on the
    session's device; the same windows (``ys`` x ``xs`` starts of ``edges`` = (h, w) pixels),
    weights (``plan``), batches of ``capacity`` and skipping as the host predictor."""
    device = session.device
    edge_y, edge_x = edges
    height, width = source.height, source.width
    weights_y = torch.from_numpy(np.stack(plan.weights_y)).to(device)
    weights_x = torch.from_numpy(np.stack(plan.weights_x)).to(device)
    acc: torch.Tensor | None = None  # blended scores of rows [done, ...), (K, rows, padded_w)
    finite = torch.ones((), dtype=torch.bool, device=device)  # every batch's logits so far
    done = 0
    pending: tuple[int, torch.Tensor, torch.Tensor, npt.NDArray[np.bool_], Any] | None = None

    def launch(i: int, strip: npt.NDArray[Any], valid: npt.NDArray[np.bool_]) -> None:
        """Queue window row ``i``'s windows on the device (returns before they finish)."""
        nonlocal acc
        run = [j for j, x in enumerate(xs) if valid[:, x : x + edge_x].any()]
        stats["windows_skipped"] += len(xs) - len(run)
        if not run:
            return
        x_dev = _strip_to_device(strip, device)
        top = ys[i] - done
        for b in range(0, len(run), capacity):
            batch = run[b : b + capacity]
            windows = torch.stack([x_dev[:, :, xs[j] : xs[j] + edge_x] for j in batch])
            logits = session.forward_on_device(windows)
            # NaN and +inf reach the max; checked when rows come back (no sync per batch)
            finite.logical_and_(torch.isfinite(logits.amax(1)).all())
            weights = weights_y[i][None, None, :, None] * weights_x[batch][:, None, None, :]
            probs = torch.softmax(logits, dim=1).mul_(weights)
            if acc is None:
                acc = torch.zeros((probs.shape[1], 0, x_dev.shape[2]), device=device)
            acc = _with_rows(acc, top + edge_y)
            for k, j in enumerate(batch):
                acc[:, top : top + edge_y, xs[j] : xs[j] + edge_x] += probs[k]
            stats["windows_run"] += len(batch)
            stats["window_pixels"] += len(batch) * edge_y * edge_x
            stats["batches"] += 1
        held = acc.shape[1] if acc is not None else 0
        stats["max_buffered_rows"] = max(
            stats["max_buffered_rows"], held + edge_y + len(source.valid_rows)
        )

    def queue_finish(until: int) -> None:
        """Queue the argmax of rows [done, until) (no later window reaches them) and its copy
        to the host, behind the windows already queued and ahead of the next row's."""
        nonlocal acc, done, pending
        ready = min(until, height) - done
        if ready <= 0:
            return
        valid = source.take_valid(ready)
        if acc is None or acc.shape[1] == 0:
            classes = torch.full((ready, width), int(NODATA_CLASS), dtype=torch.uint8)
            scores = torch.zeros((1, ready, width))
        else:
            acc = _with_rows(acc, ready)
            scores = acc[:, :ready, :width]
            classes = scores.argmax(0).to(torch.uint8)  # the first maximum wins, as on the host
            acc = acc[:, ready:]
        pinned = device.type == "cuda"
        host = torch.empty(classes.shape, dtype=torch.uint8, pin_memory=pinned)
        host.copy_(classes, non_blocking=True)
        ok = torch.empty((), dtype=torch.bool, pin_memory=pinned)
        ok.copy_(finite, non_blocking=True)
        event = None
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        if scores_sink is not None:  # the sink needs the scores now: a synchronous copy
            _check_finite(finite)
            scores_sink(done, scores.float().cpu().numpy(), valid)
        pending = (done, host, ok, valid, event)
        done += ready

    def take_finished() -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        nonlocal pending
        if pending is None:
            return
        top, host, ok, valid, event = pending
        pending = None
        if event is not None:
            event.synchronize()
        _check_finite(ok)
        rows = host.numpy()
        rows[~valid] = NODATA_CLASS
        yield top, rows

    with torch.inference_mode():
        for i, y in enumerate(ys):
            strip, valid = source.strip(y)
            queue_finish(y)  # rows above this window row: final once row i - 1 is blended
            launch(i, strip, valid)
            yield from take_finished()  # the device works on row i meanwhile
        queue_finish(source.height)
        yield from take_finished()
