from __future__ import annotations

from pathlib import Path

from eoforge.config import TRAIN_PRESETS, RunSpec, load_run_spec

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_named_configs_match_the_presets() -> None:
    assert RunSpec().train == TRAIN_PRESETS["quick"]
    for name in ("quick", "full"):
        assert load_run_spec(CONFIGS / f"{name}.yaml").train == TRAIN_PRESETS[name]
    assert TRAIN_PRESETS["full"].max_seconds <= 600
