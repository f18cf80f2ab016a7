"""Drift profiles and scores on the bundled sample's real scenes and shifted variants of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eoforge.config import BUNDLED_CATALOG, LabelSpec
from eoforge.errors import InputError
from eoforge.inference.cog import write_prediction
from eoforge.inference.drift import (
    REFERENCE_NAME,
    ProfileAccumulator,
    drift_scores,
    load_reference,
    reference_from_chips,
    reference_profile,
)
from eoforge.inference.drift_scene import profile_scene
from eoforge.inference.scene_io import ArrayReader
from eoforge.labels.classes import scl_to_classes

BANDS = ("blue", "green", "red", "nir")
FILES = ("B02", "B03", "B04", "B08")
REFERENCE_DATES = ("S2B_33TWL_20230813", "S2A_33TWL_20230818", "S2B_33TWL_20230820")
HELD_OUT = "S2A_33TWL_20230815"
LABELS = LabelSpec()


def _scene(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    folder = next(BUNDLED_CATALOG.glob(f"{prefix}_0_L2A"))
    bands = []
    for name in FILES:
        with rasterio.open(folder / f"{name}.tif") as src:
            bands.append(src.read(1))
    with rasterio.open(folder / "SCL.tif") as src:
        classes = scl_to_classes(src.read(1), LABELS)
    return np.stack(bands), classes


def _accumulate(x: np.ndarray, classes: np.ndarray) -> ProfileAccumulator:
    acc = ProfileAccumulator(BANDS, LABELS.classes)
    acc.add(x, classes)
    return acc


@pytest.fixture(scope="module")
def reference() -> dict:
    return reference_profile([_accumulate(*_scene(d)) for d in REFERENCE_DATES])


def test_a_real_date_passes_and_shifted_copies_of_it_drift(reference: dict) -> None:
    x, classes = _scene(HELD_OUT)
    same = drift_scores(_accumulate(x, classes).profile(), reference)
    assert not same["drifted"], same["reasons"]

    swapped = x[[0, 1, 3, 2]]
    scores = drift_scores(_accumulate(swapped, classes).profile(), reference)
    assert scores["drifted"] and any("band red" in r for r in scores["reasons"])

    hazy = np.where(x > 0, x + np.array([900, 650, 450, 200], np.uint16)[:, None, None], 0)
    assert drift_scores(_accumulate(hazy, classes).profile(), reference)["drifted"]

    cloudy = classes.copy()
    cloudy[: int(0.9 * len(cloudy))] = LABELS.classes.index("cloud")
    scores = drift_scores(_accumulate(x, cloudy).profile(), reference)
    assert scores["drifted"] and scores["obscured_fraction"] > 0.8
    # every score the item carries is JSON
    json.dumps(scores)


def test_profile_scene_reads_the_scene_and_its_cog_strip_by_strip(tmp_path: Path) -> None:
    x, classes = _scene(HELD_OUT)
    tif = tmp_path / "pred.tif"
    write_prediction(classes, "EPSG:32633", (120.0, 0, 500000.0, 0, -120.0, 5100000.0), tif)
    streamed = profile_scene(ArrayReader(x), tif, BANDS, LABELS.classes, strip=100)
    whole = _accumulate(x, classes).profile()
    assert streamed["class_fractions"] == pytest.approx(whole["class_fractions"])
    assert streamed["valid_fraction"] == whole["valid_fraction"]
    # the cloud buffer is cut at strip edges: the clear-pixel histograms differ by a few pixels
    a, b = np.asarray(streamed["histograms"]), np.asarray(whole["histograms"])
    assert np.abs(a - b).sum() <= 0.02 * b.sum()

    with pytest.raises(InputError, match="px but its scene"):
        profile_scene(ArrayReader(x[:, :256]), tif, BANDS, LABELS.classes)


def test_reference_from_chips_groups_chips_by_scene_and_predicts_them(tmp_path: Path) -> None:
    import torch

    from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME, open_session
    from eoforge.training.models import build_model

    x, _ = _scene(HELD_OUT)
    chips = np.stack([x[:, r : r + 64, c : c + 64] for r in (0, 256) for c in (0, 256)])
    torch.manual_seed(0)
    model = build_model(4, len(LABELS.classes), 4, [1000.0] * 4, [500.0] * 4).eval()
    torch.onnx.export(
        model, (torch.zeros(1, 4, 64, 64),), str(tmp_path / "m.onnx"),
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=False,
        dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
    )  # fmt: skip
    session = open_session(tmp_path / "m.onnx", 1, prefer_gpu=False)
    ref = reference_from_chips(session, chips, ["a", "a", "b", "b"], BANDS, LABELS.classes)
    assert ref["scenes"] == 2
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: chips.astype(np.float32)})[0]
    expected = (
        np.bincount(logits.argmax(1).ravel(), minlength=len(LABELS.classes)) / logits[:, 0].size
    )
    assert ref["class_fractions"] == pytest.approx(expected.tolist())
    with pytest.raises(InputError, match="scene ids for 4 chips"):
        reference_from_chips(session, chips, ["a"], BANDS, LABELS.classes)


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    acc = ProfileAccumulator(BANDS, LABELS.classes)
    with pytest.raises(InputError, match="must be"):
        acc.add(np.ones((3, 4, 4), np.uint16), np.zeros((4, 4), np.uint8))
    assert load_reference(tmp_path) is None
    (tmp_path / REFERENCE_NAME).write_text('{"format": "other"}')
    with pytest.raises(InputError, match="re-export the model"):
        load_reference(tmp_path)


def test_a_gain_and_the_neighbouring_tile_change_the_interquartile_range(reference: dict) -> None:
    """Haze adds, a gain multiplies: x1.3 keeps the quartiles near the spread between dates in
    the visible bands but widens every band's interquartile range; the neighbouring tile has the
    same season and atmosphere but another landscape (a wider red and green range)."""
    x, classes = _scene(HELD_OUT)
    bright = np.where(x > 0, np.clip(x * 1.3, 1, 65535), 0).astype(np.uint16)
    scores = drift_scores(_accumulate(bright, classes).profile(), reference)
    assert scores["drifted"]
    assert min(scores["band_shape_shift"].values()) > 1.0, scores["band_shape_shift"]

    other = drift_scores(_accumulate(*_scene("S2A_33TWM_20230815")).profile(), reference)
    assert other["drifted"] and any("interquartile" in r for r in other["reasons"])


def test_mostly_cloudy_dates_stay_out_of_the_spread() -> None:
    """The few clear pixels beside a mostly cloudy date's clouds (NIR ~25 % brighter here) would
    widen the spread between dates and hide real shifts: such dates stay out of it."""
    clear = [_accumulate(*_scene(d)) for d in REFERENCE_DATES]
    cloudy = _accumulate(*_scene("S2B_33TWL_20230810"))
    assert cloudy.profile()["obscured_fraction"] > 0.5
    ref = reference_profile([*clear, cloudy])
    assert ref["spread_scenes"] == sum(a.profile()["obscured_fraction"] <= 0.5 for a in clear)
    moved = abs(cloudy.profile()["quantiles"]["nir"]["p50"] - ref["quantiles"]["nir"]["p50"])
    assert ref["spread"]["nir"]["p50"] < moved / 2


def test_the_threshold_is_the_largest_shift_of_a_training_date_left_out() -> None:
    """A training date far from the others raises the reference's threshold to its own
    leave-one-out shift, so no training date is called drifted against the rest."""
    dates = ("S2A_33TWL_20230815", "S2B_33TWL_20230813", "S2B_33TWL_20230820")
    scenes = [_accumulate(*_scene(d)) for d in dates]
    x, classes = _scene(dates[0])
    scenes.append(_accumulate(np.where(x > 0, x + 300, 0).astype(np.uint16), classes))
    loo = [
        drift_scores(
            scenes[i].profile(), reference_profile([s for j, s in enumerate(scenes) if j != i])
        )["max_band_shift"]
        for i in range(len(scenes))
    ]
    ref = reference_profile(scenes)
    assert max(loo) > 2.0
    assert ref["shift_threshold"] == pytest.approx(max(loo))
    assert not any(drift_scores(s.profile(), ref)["drifted"] for s in scenes)


def test_band_histograms_leave_out_pixels_near_cloud_and_shadow() -> None:
    from scipy.ndimage import binary_dilation

    from eoforge.inference.drift import CLOUD_BUFFER_PX, FINE_BINS, FINE_STEP, OBSCURING

    rng = np.random.default_rng(5)
    x = rng.integers(0, 22000, (4, 90, 70), dtype=np.uint16)  # 0 = nodata, > FINE_MAX clipped
    classes = rng.choice(len(LABELS.classes), (90, 70), p=[0.6, 0.2, 0.17, 0.02, 0.01])
    classes = classes.astype(np.uint8)
    classes[:3, :5] = 255  # unclassified
    got = _accumulate(x, classes)

    obscured = np.isin(classes, [LABELS.classes.index(c) for c in OBSCURING]) | (classes == 255)
    near = binary_dilation(obscured, np.ones((3, 3), bool), iterations=CLOUD_BUFFER_PX)
    clear = ~near & (x != 0).all(axis=0)
    for b in range(4):
        bins = np.minimum(x[b][clear] // FINE_STEP, FINE_BINS - 1)
        assert np.array_equal(got.hist[b], np.bincount(bins, minlength=FINE_BINS))
    # other dtypes take the general path to the same bins
    as_float = _accumulate(x.astype(np.float32), classes)
    assert np.array_equal(as_float.hist, got.hist)


def test_signed_bands_below_zero_fall_in_the_first_bin() -> None:
    from eoforge.inference.drift import FINE_BINS, FINE_STEP

    rng = np.random.default_rng(6)
    x = rng.integers(-3000, 30000, (4, 40, 50)).astype(np.int32)
    classes = np.zeros((40, 50), np.uint8)
    got = _accumulate(x, classes)
    clear = (x != 0).all(axis=0)
    for b in range(4):
        bins = np.clip(x[b][clear] // FINE_STEP, 0, FINE_BINS - 1)
        assert np.array_equal(got.hist[b], np.bincount(bins, minlength=FINE_BINS))


@pytest.mark.parametrize("n_classes", [5, 20])  # counted by compares up to 16, by bincount above
def test_class_counts_skip_nodata_and_codes_outside_the_schema(n_classes: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(1, 5000, (4, 60, 30), dtype=np.uint16)
    x[2, :7] = 0  # nodata in one band
    classes = rng.integers(0, n_classes + 3, (60, 30)).astype(np.int16)
    classes[5:9] = -1  # outside uint8: unclassified
    acc = ProfileAccumulator(BANDS, [f"c{k}" for k in range(n_classes)])
    acc.add(x, classes)
    valid = (x != 0).all(axis=0)
    want = np.bincount(classes[valid & (classes >= 0)], minlength=n_classes + 3)[:n_classes]
    assert np.array_equal(acc.class_counts, want)
    assert acc.valid == int(valid.sum()) and acc.pixels == 60 * 30
