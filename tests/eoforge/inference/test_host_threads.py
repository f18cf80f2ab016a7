"""The predictor's host work over row bands in threads: every row once, errors surfaced, the same
numbers as on one thread, and a pool that survives a fork."""

from __future__ import annotations

import multiprocessing
import threading
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from eoforge.errors import InputError
from eoforge.inference import host_threads
from eoforge.inference.host_threads import MIN_BAND_ROWS, over_row_bands
from eoforge.inference.uncertainty import uncertainty_rows
from eoforge.inference.windows import _argmax_classes, _weighted_softmax_


@pytest.fixture
def four_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_threads, "host_threads", lambda: 4)


def test_every_row_once_in_contiguous_bands(four_threads: None) -> None:
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def work(rows: slice) -> None:
        with lock:
            seen.append((rows.start, rows.stop, threading.current_thread().name))

    over_row_bands(work, 1000)
    bands = sorted((a, b) for a, b, _ in seen)
    assert len(bands) == 4 and bands[0][0] == 0 and bands[-1][1] == 1000
    assert all(b == c for (_, b), (c, _) in pairwise(bands))
    assert any(name.startswith("eoforge-host") for *_, name in seen)

    seen.clear()
    over_row_bands(work, 2 * MIN_BAND_ROWS - 1)  # too few rows to split: one call, here
    assert seen == [(0, 2 * MIN_BAND_ROWS - 1, threading.current_thread().name)]


def test_errors_surface_after_every_band_finished(four_threads: None) -> None:
    done: list[int] = []

    def work(rows: slice) -> None:
        if rows.start == 500:
            raise ValueError("band 500")
        done.append(rows.start)

    with pytest.raises(ValueError, match="band 500"):
        over_row_bands(work, 1000)
    assert sorted(done) == [0, 250, 750]


def test_threaded_blend_math_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 300, 260)).astype(np.float32)
    valid = rng.random((300, 260)) > 0.1
    ramps: list[Any] = [
        ([(slice(0, 40), np.linspace(0.1, 1, 40, dtype=np.float32))], []),
        ([], [(slice(220, 260), np.linspace(1, 0.1, 40, dtype=np.float32))]),
    ]
    results = {}
    for threads in (1, 4):
        monkeypatch.setattr(host_threads, "host_threads", lambda threads=threads: threads)
        probs = _weighted_softmax_(logits.copy(), ramps)
        scores = probs.sum(axis=0)
        results[threads] = (probs, _argmax_classes(scores), uncertainty_rows(scores, valid))
    for a, b in zip(results[1], results[4], strict=True):
        assert np.array_equal(a, b)
    # and the softmax is the softmax
    ref = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(results[4][0][:, :, 100:200, 100:200], ref[:, :, 100:200, 100:200],
                               rtol=1e-5)  # fmt: skip

    broken = logits.copy()
    broken[1, 2, 290, 3] = np.nan  # in the last band
    with pytest.raises(InputError, match="non-finite logits"):
        _weighted_softmax_(broken, ramps)


def test_threaded_drift_histograms_equal_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from eoforge.config import LabelSpec
    from eoforge.inference.drift import ProfileAccumulator

    rng = np.random.default_rng(1)
    x = rng.integers(0, 22000, (4, 600, 500), dtype=np.uint16)
    classes = rng.choice(5, (600, 500), p=[0.6, 0.2, 0.17, 0.02, 0.01]).astype(np.uint8)
    hists = []
    for threads in (1, 4):
        monkeypatch.setattr(host_threads, "host_threads", lambda threads=threads: threads)
        acc = ProfileAccumulator(["a", "b", "c", "d"], LabelSpec().classes)
        acc.add(x, classes)
        hists.append(acc.hist)
    assert np.array_equal(hists[0], hists[1]) and hists[0].sum() > 0


def _child(queue: Any) -> None:
    out = np.zeros(1000)

    def work(rows: slice) -> None:
        out[rows] = 1

    over_row_bands(work, 1000)
    queue.put(float(out.sum()))


def test_a_forked_child_gets_its_own_pool(four_threads: None) -> None:
    over_row_bands(lambda rows: None, 1000)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 1000.0
