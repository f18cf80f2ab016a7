"""Tests of eoforge.training.models: shapes, in-network normalisation, window and argument checks."""

from __future__ import annotations

import copy

import pytest
import torch

from eoforge.errors import InputError
from eoforge.training.models import WINDOW_MULTIPLE, build_model, check_window, index_pairs_for

MEAN = [500.0, 700.0, 600.0, 2500.0]
STD = [200.0, 250.0, 300.0, 900.0]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(4, 5, 8, MEAN, STD).eval()


@pytest.mark.parametrize(("n", "h", "w"), [(2, 32, 32), (1, 64, 48), (3, 8, 16)])
def test_logits_have_input_size(model: torch.nn.Module, n: int, h: int, w: int) -> None:
    with torch.no_grad():
        out = model(torch.rand(n, 4, h, w) * 5000)
    assert out.shape == (n, 5, h, w)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_normalisation_is_inside_the_network(model: torch.nn.Module) -> None:
    state = model.state_dict()
    assert state["band_mean"].flatten().tolist() == MEAN
    assert state["band_std"].flatten().tolist() == STD
    plain = copy.deepcopy(model)
    plain.band_mean.zero_()  # type: ignore[operator]
    plain.band_std.fill_(1.0)  # type: ignore[operator]
    raw = torch.rand(2, 4, 16, 16) * 5000
    mean, std = torch.tensor(MEAN).view(1, 4, 1, 1), torch.tensor(STD).view(1, 4, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(raw), plain((raw - mean) / std), atol=1e-5)


@pytest.mark.parametrize("size", [8, 32, 64, 256])
def test_check_window_accepts_multiples_of_8(size: int) -> None:
    check_window(size, size * 2)


@pytest.mark.parametrize(("h", "w"), [(30, 32), (32, 36), (0, 32), (4, 8)])
def test_check_window_rejects_other_sizes(h: int, w: int) -> None:
    with pytest.raises(InputError, match=f"multiple of {WINDOW_MULTIPLE}"):
        check_window(h, w)


def test_same_seed_same_initial_weights() -> None:
    torch.manual_seed(3)
    a = build_model(4, 5, 8, MEAN, STD)
    torch.manual_seed(3)
    b = build_model(4, 5, 8, MEAN, STD)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"band_mean": MEAN[:3]}, "one value per input band"),
        ({"band_std": [1.0, 0.0, 1.0, 1.0]}, "band_std"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_build_model_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "in_channels": 4,
        "num_classes": 5,
        "base_channels": 8,
        "band_mean": MEAN,
        "band_std": STD,
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        build_model(**args)  # type: ignore[arg-type]


def test_index_pairs_follow_band_names() -> None:
    assert index_pairs_for(["blue", "green", "red", "nir"]) == [(3, 2), (1, 3)]
    assert index_pairs_for(["nir", "red"]) == [(0, 1)]
    assert index_pairs_for(["blue", "swir"]) == []


def test_spectral_indices_are_extra_inputs() -> None:
    torch.manual_seed(0)
    net = build_model(4, 5, 8, MEAN, STD, index_pairs=[(3, 2), (1, 3)]).eval()
    assert net.encoders[0][0].in_channels == 6  # type: ignore[index]
    x = torch.rand(1, 4, 16, 16) * 5000
    x[..., :4, :4] = 0  # nodata: the ratios stay finite
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 5, 16, 16)
    assert torch.isfinite(out).all()


def test_index_pairs_must_name_two_bands() -> None:
    with pytest.raises(InputError, match="index pair"):
        build_model(4, 5, 8, MEAN, STD, index_pairs=[(3, 4)])
