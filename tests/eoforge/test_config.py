from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eoforge.config import InferSpec, LabelSpec, RunSpec, load_run_spec
from eoforge.errors import InputError


def test_yaml_roundtrip_and_fingerprint(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  max_seconds: 5\nchips:\n  size: 32\n  stride: 32\n")
    spec = load_run_spec(p)
    assert spec.train.max_seconds == 5 and spec.chips.size == 32
    assert spec.fingerprint() != RunSpec().fingerprint()
    assert RunSpec().fingerprint() == RunSpec().fingerprint()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train: [1, 2", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
        ("chips:\n  size: -3\n", "chips.size"),
        ("nonsense: 1\n", "nonsense"),
    ],
)
def test_bad_config_is_an_input_error_naming_the_file(
    tmp_path: Path, text: str, match: str
) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        load_run_spec(p)
    assert "bad.yaml" in str(info.value)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_run_spec(tmp_path / "nope.yaml")


def test_overlap_must_be_below_window() -> None:
    with pytest.raises(ValidationError, match="overlap"):
        InferSpec(window=64, overlap=64)


def test_label_groups_must_not_overlap() -> None:
    with pytest.raises(ValidationError, match="both"):
        LabelSpec(scl_groups={"vegetation": (4,), "bare": (4,)})
