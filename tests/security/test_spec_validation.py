"""Bad input is refused before any work, in one paragraph, never retried (issue 15, class 3).

The whole spec is checked when it is loaded: datetimes, the API URL, the search box, inference
sizes; an empty file or a folder is not a config. The issue's own cases run through the command
line (exit 2, no traceback, nothing written); variants run against :func:`load_run_spec`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from eoforge.config import RunSpec, load_run_spec
from eoforge.errors import InputError

Cli = Callable[..., subprocess.CompletedProcess[str]]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


#: case -> (YAML body, or None for a folder; extra CLI args; words the error must name, with
#: ``{cfg}`` standing for the config's path)
CLI_CASES: dict[str, tuple[str | None, tuple[str, ...], tuple[str, ...]]] = {
    "datetime-month-slash-year": (
        "stac:\n  datetime: 08/2023\n",
        (),
        ("{cfg}", "stac.datetime", "08/2023", "RFC 3339"),
    ),
    "api-url-without-scheme": (
        "{}\n",
        ("--api-url", "example.com/stac"),
        ("--api-url", "https://example.com/stac"),
    ),
    "infer-window-not-multiple-of-8": (
        "infer:\n  window: 100\n",
        (),
        ("{cfg}", "infer.window", "multiple of 8"),
    ),
    "infer-threads-zero": (
        "infer:\n  threads: 0\n",
        (),
        ("{cfg}", "infer.threads", "greater than 0"),
    ),
    "empty-yaml": ("", (), ("{cfg}", "is empty", "'{}'")),
    "bbox-west-east-swapped": (
        "stac:\n  bbox: [16.5, 46.0, 15.5, 47.0]\n",
        (),
        ("{cfg}", "stac.bbox", "swapped", "[15.5, 46.0, 16.5, 47.0]"),
    ),
    "config-is-a-folder": (None, (), ("{cfg}", "is a folder")),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_bad_spec_before_any_work(eoforge_cli: Cli, tmp_path: Path, case: str) -> None:
    body, extra, names = CLI_CASES[case]
    cfg = tmp_path / "cfg" / "run.yaml"
    if body is None:
        cfg.mkdir(parents=True)
    else:
        cfg.parent.mkdir()
        cfg.write_text(body)
    before = snapshot(tmp_path)
    proc = eoforge_cli(
        "run", "--config", str(cfg), "--plain", *extra,
        "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "✓" not in proc.stderr, proc.stderr[-2000:]
    for name in names:
        name = name.replace("{cfg}", str(cfg))
        assert name in text, f"{name!r} not in: {text}"
    after = {p for p in snapshot(tmp_path) if not p.startswith(".prefect-home")}
    assert after == before, f"wrote {sorted(after - before)}"


SPEC_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "datetime-words": ("stac:\n  datetime: last week\n", ("stac.datetime", "last week")),
    "datetime-month-13": ("stac:\n  datetime: '2023-13-01'\n", ("2023-13-01", "not a real date")),
    "datetime-month-13-unquoted": (
        "stac:\n  datetime: 2023-13-01\n",
        ("month must be in 1..12", "quote it"),
    ),
    "datetime-day-32": ("stac:\n  datetime: 2023-08-32/2023-09-01\n", ("2023-08-32",)),
    "datetime-reversed": ("stac:\n  datetime: 2023-08-31/2023-08-01\n", ("ends before",)),
    "datetime-open-both": ("stac:\n  datetime: ../..\n", ("open at both ends",)),
    "datetime-three-parts": ("stac:\n  datetime: 2023/2024/2025\n", ("interval",)),
    "datetime-us-style": ("stac:\n  datetime: 08/01/2023\n", ("08/01/2023",)),
    "api-url-no-scheme": (
        "stac:\n  api_url: earth-search.aws.element84.com/v1\n",
        ("stac.api_url", "https://earth-search"),
    ),
    "api-url-ftp": ("stac:\n  api_url: ftp://example.com/stac\n", ("stac.api_url", "ftp://")),
    "api-url-no-host": ("stac:\n  api_url: 'http:///stac'\n", ("stac.api_url",)),
    "bbox-swapped-west": ("stac:\n  bbox: [-70.0, -34.0, -71.0, -33.0]\n", ("swapped",)),
    "bbox-south-above-north": (
        "stac:\n  bbox: [15.0, 47.0, 16.0, 46.0]\n",
        ("south 47.0 above north",),
    ),
    "bbox-latitude-95": ("stac:\n  bbox: [15.0, 46.0, 16.0, 95.0]\n", ("not a lon/lat box",)),
    "bbox-antimeridian": ("stac:\n  bbox: [179.0, -18.0, -179.0, -16.0]\n", ("antimeridian",)),
    "window-7": ("infer:\n  window: 7\n  overlap: 0\n", ("multiple of 8",)),
    "window-520-ok-but-516": ("infer:\n  window: 516\n", ("512 or 520",)),
    "threads-negative": ("infer:\n  threads: -2\n", ("infer.threads",)),
    "comments-only": ("# nothing here yet\n", ("is empty",)),
    "not-utf8": ("\udcff", ("not valid YAML", "utf-8")),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_spec_is_refused_naming_the_field(tmp_path: Path, case: str) -> None:
    body, names = SPEC_CASES[case]
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(body.encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError) as info:
        load_run_spec(cfg)
    for name in (str(cfg), *names):
        assert name in str(info.value), f"{name!r} not in: {info.value}"


@pytest.mark.parametrize(
    "datetime",
    [
        "2023-08-01/2023-08-31",
        "2023-08",
        "2023",
        "2023-08-01",
        "2023-08-01T10:00:00Z",
        "2023-08-01T10:00:00.5+02:00/..",
        "../2023-08-31",
        "2023-08-01/2023-08-01",
    ],
)
def test_valid_datetimes_still_load(datetime: str) -> None:
    spec = RunSpec.model_validate({"stac": {"datetime": datetime}})
    assert spec.stac.datetime == datetime


def test_unquoted_yaml_date_means_the_date(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stac:\n  datetime: 2023-08-10\n")  # YAML reads a datetime.date
    assert load_run_spec(cfg).stac.datetime == "2023-08-10"


@pytest.mark.parametrize(
    "bbox", [(15.5, 46.0, 16.5, 47.0), (-180, -90, 180, 90), (170, -20, 180, -10)]
)
def test_valid_boxes_still_load(bbox: tuple[float, float, float, float]) -> None:
    assert RunSpec.model_validate({"stac": {"bbox": bbox}}).stac.bbox == bbox


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_example_configs_still_load(path: Path) -> None:
    load_run_spec(path)


def test_defaults_keep_their_fingerprint() -> None:
    """Validators changed no field: the default inference section hashes as the defaults say,
    so stores already written keep their keys. The value changes only when a default that
    changes the predictions changes: session 8's overlap of 48 px instead of 64 (ADR 0012)
    gives other class maps, which must not be served from the 64 px ones (before it:
    a5b04a69bb64a328187aac1420abd7bf923f3d6a8ab205bc75bd734172837bb0)."""
    assert RunSpec().infer.fingerprint() == (
        "2d762670383eb7be9452835663f547d1b1347d9f1e9b2866cb50c400e632aaa3"
    )
    old = RunSpec().infer.model_copy(update={"overlap": 64})
    assert old.fingerprint() == "a5b04a69bb64a328187aac1420abd7bf923f3d6a8ab205bc75bd734172837bb0"
