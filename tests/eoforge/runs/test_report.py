"""Tests of eoforge.runs.report: quicklook PNGs and the HTML report on tiny in-code data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eoforge.errors import InputError
from eoforge.runs.report import (
    class_map_png,
    confusion_png,
    learning_curves_png,
    true_colour_png,
)
from eoforge.runs.report_page import write_report
from eoforge.training.metrics import metrics_from_confusion

NAMES = ["vegetation", "bare", "water", "cloud", "shadow"]


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 500
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_true_colour_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bands = rng.integers(100, 4000, (4, 60, 80), dtype=np.uint16)
    bands[:, :5, :] = 0  # a nodata strip
    out = true_colour_png(bands, tmp_path / "q" / "rgb.png")
    assert _png_size(out) == (80, 60)
    with Image.open(out) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert (rgb[:5] == 0).all() and rgb[5:].max() == 255
    small = true_colour_png(
        rng.integers(1, 9, (3, 3000, 1500), dtype=np.uint16), tmp_path / "s.png", rgb=(0, 1, 2)
    )
    assert _png_size(small) == (500, 1000)  # decimated to max_size
    with pytest.raises(InputError, match="rgb"):
        true_colour_png(bands, tmp_path / "x.png", rgb=(4, 1, 0))


def test_class_map_png_is_deterministic(tmp_path: Path) -> None:
    classes = np.tile(np.arange(5, dtype=np.uint8), (40, 10))
    classes[:4] = 255
    a = class_map_png(classes, NAMES, tmp_path / "a.png", "prediction <S2A>")
    b = class_map_png(classes, NAMES, tmp_path / "b.png", "prediction <S2A>")
    w, h = _png_size(a)
    assert 300 < w < 2000 and 200 < h < 2000
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files
    with pytest.raises(InputError, match="values"):
        class_map_png(np.full((4, 4), 7, np.uint8), NAMES, tmp_path / "c.png", "bad")


def test_confusion_and_learning_curves(tmp_path: Path) -> None:
    cm = np.array(
        [[50, 3, 0, 1, 0], [4, 20, 0, 0, 0], [0, 0, 0, 0, 0], [2, 0, 0, 30, 5], [0, 0, 0, 6, 9]]
    )
    w, h = _png_size(confusion_png(cm, NAMES, tmp_path / "cm.png", "test confusion"))
    assert 300 < w < 2000 and 300 < h < 2000
    history = [
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.1, "val_miou": 0.2},
        {"epoch": 2, "train_loss": 0.8, "val_loss": None, "val_miou": 0.35},
        {"epoch": 3, "train_loss": 0.6, "val_loss": 0.7, "val_miou": 0.41},
    ]
    w, h = _png_size(learning_curves_png(history, tmp_path / "lc.png"))
    assert 500 < w < 2000 and 200 < h < 1000
    with pytest.raises(InputError, match="empty"):
        learning_curves_png([], tmp_path / "none.png")
    with pytest.raises(InputError, match="shape"):
        confusion_png(cm[:4, :4], NAMES, tmp_path / "x.png", "bad")


def test_write_report(tmp_path: Path) -> None:
    model = metrics_from_confusion(np.array([[8, 2], [1, 9]]), ["vegetation", "water"])
    baseline = metrics_from_confusion(np.array([[7, 3], [3, 7]]), ["vegetation", "water"])
    png = class_map_png(
        np.zeros((8, 8), np.uint8), ["vegetation", "water"], tmp_path / "quicklooks" / "p.png", "p"
    )
    out = write_report(
        tmp_path / "report.html",
        "Run <1> & co",
        {"model": model, "baseline": baseline},
        [("prediction <33TWM>", png)],
        tables={
            "timings": [{"stage": "train", "seconds": 12.5}, {"stage": "infer<x>", "seconds": 1.0}]
        },
        links={"provenance": "provenance.json", "model": "model/model.onnx"},
    )
    text = out.read_text()
    assert "<title>Run &lt;1&gt; &amp; co</title>" in text
    assert "<img src='quicklooks/p.png' alt='prediction &lt;33TWM&gt;'>" in text
    assert "infer&lt;x&gt;" in text and "<x>" not in text
    assert f"{model['miou']:.3f}" in text and f"{baseline['miou']:.3f}" in text
    assert f"{model['pixel_accuracy']:.3f}" in text  # 0.850
    assert "<td class=best>0.850</td>" in text and "<th>random forest</th>" in text
    assert "href='provenance.json'" in text and "href='model/model.onnx'" in text
    # a single metrics dict is the model's
    text = write_report(tmp_path / "r2.html", "t", model, []).read_text()
    assert "<th>model</th>" in text and "0.850" in text
