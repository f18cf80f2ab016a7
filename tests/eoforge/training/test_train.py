"""Tests of eoforge.training.train on a tiny seeded synthetic chip store (ADR 0001 layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eoforge_test_helpers import (  # type: ignore[import-not-found]
    CLASSES,
    write_chip_store,
)
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from eoforge.chips.read import class_weights, read_chip_split
from eoforge.compute import gpu
from eoforge.config import TrainSpec
from eoforge.errors import InputError
from eoforge.training.files import MODEL_FORMAT, load_model
from eoforge.training.runtime import resolve_device
from eoforge.training.train import TrainHyperParams, TrainResult, evaluate, train_model

SPEC = TrainSpec(max_epochs=6, batch_size=4, base_channels=8, learning_rate=1e-2, threads=1)


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chip_store(tmp_path_factory.mktemp("chips") / "chips.zarr")


@pytest.fixture(scope="module")
def trained(chips: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_model(chips, SPEC, tmp_path_factory.mktemp("model"), progress=False)


def test_training_learns_the_synthetic_task(trained: TrainResult, chips: Path) -> None:
    assert trained.best_val_miou > 0.85
    assert 1 <= trained.best_epoch <= trained.epochs_run <= SPEC.max_epochs
    model = load_model(trained.model_dir)
    metrics, _ = evaluate(model, read_chip_split(chips, "test"), CLASSES)
    assert metrics["miou"] > 0.85
    assert metrics["pixel_accuracy"] > 0.9


def test_model_directory_holds_safetensors_and_json(trained: TrainResult) -> None:
    assert trained.weights_path == trained.model_dir / "model.safetensors"
    config = json.loads(trained.config_path.read_text())
    assert config["format"] == MODEL_FORMAT
    assert config["architecture"]["in_channels"] == 4
    assert config["classes"] == list(CLASSES)
    assert config["bands"] == ["blue", "green", "red", "nir"]
    assert len(config["band_mean"]) == len(config["band_std"]) == 4
    assert config["best_epoch"] == trained.best_epoch
    assert config["hyper_params"]["seed"] == SPEC.seed
    assert len(config["history"]) == trained.epochs_run == len(trained.history)
    record = config["history"][0]
    assert set(record) >= {"epoch", "train_loss", "val_loss", "val_miou", "lr", "seconds"}
    best = max(h["val_miou"] for h in config["history"])
    assert config["best_val_miou"] == pytest.approx(best)
    assert (
        load_file(str(trained.weights_path)).keys()
        == load_model(trained.model_dir).state_dict().keys()
    )


def test_saved_weights_are_the_best_epochs_not_the_last(trained: TrainResult, chips: Path) -> None:
    """Checkpoint selection: the saved model reproduces the recorded best validation mIoU, which
    the last epoch did not reach (so the last epoch's weights would score otherwise)."""
    scores = [(h["val_miou"], h["val_accuracy"]) for h in trained.history]
    best, last = scores[trained.best_epoch - 1], scores[-1]
    # the fixture's premise: a later epoch scored lower than the best one
    assert trained.best_epoch < trained.epochs_run and best[0] == trained.best_val_miou, scores
    assert best[0] == max(s[0] for s in scores) > last[0], scores
    metrics, _ = evaluate(load_model(trained.model_dir), read_chip_split(chips, "val"), CLASSES)
    assert (metrics["miou"], metrics["pixel_accuracy"]) == best, scores


def test_same_seed_same_weights_and_metrics(
    chips: Path, trained: TrainResult, tmp_path: Path
) -> None:
    again = train_model(chips, SPEC, tmp_path / "again", progress=False)
    assert trained.schedule_clock_from_epoch is None  # on course: the steps led throughout
    a, b = load_file(str(trained.weights_path)), load_file(str(again.weights_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    clocks = ("seconds", "train_seconds")
    strip = [{k: v for k, v in h.items() if k not in clocks} for h in trained.history]
    assert strip == [{k: v for k, v in h.items() if k not in clocks} for h in again.history]


def test_other_seed_other_weights(chips: Path, trained: TrainResult, tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"seed": 1, "max_epochs": 1})
    other = train_model(chips, spec, tmp_path, progress=False)
    a, b = load_file(str(trained.weights_path)), load_file(str(other.weights_path))
    assert not torch.equal(a["head.weight"], b["head.weight"])


def test_learning_rate_warms_up_then_decays(trained: TrainResult) -> None:
    lrs = [h["lr"] for h in trained.history]
    assert lrs[0] == pytest.approx(SPEC.learning_rate * 0.04)
    peak = int(np.argmax(lrs))
    assert 0 < peak < len(lrs) - 1
    assert lrs[-1] < lrs[peak] / 2


def test_wall_clock_budget_stops_training(chips: Path, tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"max_epochs": 50, "max_seconds": 1e-3})
    result = train_model(chips, spec, tmp_path, progress=False)
    assert result.epochs_run == 1  # at least one epoch always runs, then the budget stops it


def test_a_run_that_cannot_hold_its_epochs_records_when_the_clock_took_over(
    chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eoforge.training.ops import Schedule

    def always_late(self: Schedule, epoch_seconds: float, epochs_left: int) -> bool:
        self.clock_from = (0.0, self.progress())
        return True

    monkeypatch.setattr(Schedule, "check_pace", always_late)
    spec = SPEC.model_copy(update={"max_epochs": 3, "patience": 10})
    result = train_model(chips, spec, tmp_path, progress=False)
    # the pace is judged from the second epoch's end on: the clock leads from the third
    assert result.schedule_clock_from_epoch == 3
    config = json.loads(result.config_path.read_text())
    assert config["schedule_clock_from_epoch"] == 3


def test_load_model_is_in_eval_mode_and_deterministic(trained: TrainResult) -> None:
    model = load_model(trained.model_dir)
    assert not model.training
    x = torch.rand(2, 4, 32, 32) * 4000
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_load_model_refuses_a_pickle(trained: TrainResult, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(trained.config_path.read_text())
    model = load_model(trained.model_dir)
    torch.save(model.state_dict(), tmp_path / "model.safetensors")  # a zip pickle in disguise
    with pytest.raises(InputError, match="never pickles"):
        load_model(tmp_path)


def test_load_model_refuses_a_non_safetensors_weights_name(
    trained: TrainResult, tmp_path: Path
) -> None:
    config = json.loads(trained.config_path.read_text())
    config["weights"] = "model.pt"
    (tmp_path / "model.json").write_text(json.dumps(config))
    torch.save(load_model(trained.model_dir).state_dict(), tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"only a \.safetensors"):
        load_model(tmp_path)


def test_load_model_needs_model_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no model\.json"):
        load_model(tmp_path)


def test_missing_chip_store_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        train_model(tmp_path / "nope.zarr", SPEC, tmp_path / "m", progress=False)


def test_chip_size_must_fit_the_network(tmp_path: Path) -> None:
    chips = write_chip_store(tmp_path / "odd.zarr", size=36, counts=(2, 2, 2))
    with pytest.raises(InputError, match="multiple of 8"):
        train_model(chips, SPEC, tmp_path / "m", progress=False)


def test_class_weights_favour_rare_classes() -> None:
    y = np.array([0] * 90 + [1] * 10 + [255] * 50, dtype=np.uint8)
    w = class_weights(y, 3, 255, power=0.5)
    assert w[1] > w[0] > 0
    assert w[2] == 0  # absent class
    assert float((np.array([0.9, 0.1, 0.0]) * w).sum()) == pytest.approx(1.0)


def test_hyper_params_take_spec_fields() -> None:
    hp = TrainHyperParams.from_spec(SPEC)
    assert (hp.max_epochs, hp.batch_size, hp.base_channels) == (6, 4, 8)
    assert hp.patience == TrainHyperParams().patience  # not in the spec: default kept


def test_bad_hyper_params_are_input_errors() -> None:
    with pytest.raises(InputError, match="warmup_fraction"):
        TrainHyperParams(warmup_fraction=1.0)
    with pytest.raises(ValidationError, match="threads"):  # the spec itself refuses it now
        TrainSpec(threads=0)


def test_load_model_refuses_a_garbled_architecture(trained: TrainResult, tmp_path: Path) -> None:
    config = json.loads(trained.config_path.read_text())
    del config["architecture"]["in_channels"]
    (tmp_path / "model.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(trained.weights_path.read_bytes())
    with pytest.raises(InputError, match="in_channels"):
        load_model(tmp_path)


def test_load_model_refuses_weights_of_another_run(trained: TrainResult, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(trained.config_path.read_text())
    state = load_file(str(trained.weights_path))
    state["head.bias"] = state["head.bias"] + 1
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(InputError, match="sha256"):
        load_model(tmp_path)


def test_training_records_its_device_and_step_rate(trained: TrainResult) -> None:
    config = json.loads(trained.config_path.read_text())
    on_gpu = gpu.torch_device().type == "cuda"
    assert trained.device == config["device"] == ("cuda" if on_gpu else "cpu")
    if not on_gpu:
        assert trained.amp_dtype is None and config["amp_dtype"] is None  # fp32 on the CPU
        assert trained.chip_route == config["chip_route"] == "cpu"
    steps = sum(h["steps"] for h in trained.history)
    assert steps == trained.epochs_run * -(-16 // SPEC.batch_size)  # 16 train chips
    seconds = sum(h["train_seconds"] for h in trained.history)
    assert trained.steps_per_second == pytest.approx(steps / seconds)
    assert config["steps_per_second"] == pytest.approx(trained.steps_per_second)


def test_cpu_device_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(gpu.DISABLE_ENV, "1")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu.DISABLE_ENV, "1")
    with pytest.raises(InputError, match=r"train.device is 'cuda'.*'auto' or 'cpu'"):
        resolve_device("cuda")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValidationError, match="device"):
        TrainSpec(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="device"):
        TrainHyperParams(device="tpu")


@pytest.mark.requires_gpu
def test_training_on_cuda_with_amp(chips: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("requires_gpu: torch is a CPU-only build here")
    result = train_model(chips, SPEC.model_copy(update={"device": "cuda"}), tmp_path, False)
    assert result.device == "cuda"
    assert result.amp_dtype in ("bfloat16", "float16")
    assert result.chip_route in ("kvikio", "cupy", "torch")
    assert result.best_val_miou > 0.85
    # the weights come back to the CPU: the model loads and scores there
    model = load_model(result.model_dir)
    assert next(model.parameters()).device.type == "cpu"
    metrics, _ = evaluate(model, read_chip_split(chips, "test"), CLASSES)
    assert metrics["miou"] > 0.85


def test_weight_average_is_validated_and_saved(chips: Path, tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"ema_decay": 0.9, "max_epochs": 3})
    a = train_model(chips, spec, tmp_path / "a", progress=False)
    b = train_model(chips, spec, tmp_path / "b", progress=False)
    raw = train_model(chips, SPEC.model_copy(update={"max_epochs": 3}), tmp_path / "r", False)
    wa, wb, wr = (load_file(str(r.weights_path)) for r in (a, b, raw))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded: the average is reproducible
    assert not torch.equal(wa["head.weight"], wr["head.weight"])  # and not the raw weights
    assert [h["val_miou"] for h in a.history] != [h["val_miou"] for h in raw.history]
    model = load_model(a.model_dir)  # same architecture, loads like any checkpoint
    metrics, _ = evaluate(model, read_chip_split(chips, "val"), CLASSES)
    assert metrics["miou"] == pytest.approx(a.best_val_miou)
    with pytest.raises(ValidationError, match="ema_decay"):
        TrainSpec(ema_decay=1.0)
