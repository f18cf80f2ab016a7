"""Secrets never leak: a canary in environment credentials and in signed asset URLs is nowhere
in logs, provenance.json, reports or other outputs.

The end-to-end case runs the plain pipeline over a catalog whose asset hrefs are signed-looking
URLs (``?X-Amz-Signature=<canary>...``) served by a loopback HTTP file server, with a canary AWS
secret in the environment and every log record captured at DEBUG level, then greps every file
of the run folder and the store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from eoforge_fault_proxy import RangeFileServer  # type: ignore[import-not-found]

from eoforge.config import BUNDLED_CATALOG, RunSpec
from eoforge.io.redact import MASK, install_log_redaction, redact, redact_obj, redact_url
from eoforge.runs.provenance import stac_item_records, write_provenance

SIG = "canary-sig-5f1c0de"
CRED = "canary-cred-AKIAEXAMPLE"
ENV_SECRET = "canary-env-wJalrXUtnFEMI-K7MDENG"
TOKEN = "canary-token-9a8b7c"


def signed(url: str) -> str:
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CRED}%2F20230815"
        f"&X-Amz-Signature={SIG}&X-Amz-Security-Token={TOKEN}"
    )


@pytest.fixture()
def canary_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("EOFORGE_TEST_API_TOKEN", TOKEN)


def assert_clean(text: str, where: str) -> None:
    for canary in (SIG, CRED, ENV_SECRET, TOKEN, "canary-"):
        assert canary not in text, f"{canary!r} leaked into {where}"


@pytest.mark.parametrize(
    "url",
    [
        signed("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B02.tif"),
        f"https://acct.blob.core.windows.net/c/B02.tif?st=2023&se=2030&sp=r&sv=2021&sr=b&sig={SIG}",
        f"https://storage.googleapis.com/b/B02.tif?X-Goog-Signature={SIG}&X-Goog-Credential={CRED}",
        f"https://d111.cloudfront.net/B02.tif?Expires=1&Signature={SIG}&Key-Pair-Id={CRED}",
        f"https://user:{SIG}@example.com/B02.tif?token={TOKEN}",
    ],
)
def test_signed_urls_lose_query_and_credentials(url: str, canary_env: None) -> None:
    assert_clean(redact_url(url), "redact_url")
    assert_clean(redact(f"could not read '{url}': HTTP 403"), "redact")
    assert_clean(redact(f'GDAL: /vsicurl/{url} "GET /x?{url.split("?")[-1]} HTTP/1.1"'), "vsi")
    assert redact_url(url).endswith("B02.tif")


def test_secret_environment_values_are_masked(canary_env: None) -> None:
    text = f"env dump: AWS_SECRET_ACCESS_KEY={ENV_SECRET} token {TOKEN}"
    assert_clean(redact(text), "redact")
    assert MASK in redact(text)
    obj = {"a": [f"x {ENV_SECRET}", {"k": signed("http://h/x.tif")}], ENV_SECRET: 1, "n": 3}
    clean = redact_obj(obj)
    assert_clean(json.dumps(clean), "redact_obj")
    assert clean["n"] == 3


def test_short_and_ordinary_values_are_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_KEY", "1")
    assert redact("epoch 1 of 1") == "epoch 1 of 1"


def test_log_records_are_redacted(canary_env: None, caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    log = logging.getLogger("eoforge.test.secrets")
    url = signed("https://bucket.s3.amazonaws.com/B02.tif")
    with caplog.at_level(logging.DEBUG):
        log.warning("reading %s with key %s", url, ENV_SECRET)
        try:
            raise OSError(f"HTTP 403 for {url}")
        except OSError:
            log.exception("read failed")
    assert_clean(caplog.text, "captured logs")
    assert "B02.tif" in caplog.text


def test_provenance_records_no_secret(canary_env: None, tmp_path: Path) -> None:
    item = json.loads(
        (BUNDLED_CATALOG / "S2B_33TWL_20230810_0_L2A" / "S2B_33TWL_20230810_0_L2A.json").read_text()
    )
    for asset in item["assets"].values():
        asset["href"] = signed(f"https://bucket.s3.amazonaws.com/{asset['href'][2:]}")
    item["links"] = [{"rel": "self", "href": signed("https://api.example.com/items/x")}]
    spec = RunSpec().model_dump(mode="json")
    spec["stac"]["api_url"] = f"https://api.example.com/v1?token={TOKEN}"
    record = {
        "parameters": spec,
        "stac_items": stac_item_records([item], ["blue", "scl"]),
        "error": f"failed with {ENV_SECRET}",
        "path": tmp_path,
    }
    write_provenance(tmp_path / "provenance.json", record)
    text = (tmp_path / "provenance.json").read_text()
    assert_clean(text, "provenance.json")
    written = json.loads(text)
    assert written["stac_items"][0]["assets"]["blue"] == "https://bucket.s3.amazonaws.com/B02.tif"
    assert written["parameters"]["stac"]["api_url"] == "https://api.example.com/v1"


def _signed_catalog(root: Path, base_url: str) -> Path:
    """The bundled catalog with every asset behind a signed-looking http URL."""
    cat = root / "signed-catalog"
    cat.mkdir()
    (cat / "collection.json").write_text((BUNDLED_CATALOG / "collection.json").read_text())
    for item_dir in sorted(p for p in BUNDLED_CATALOG.iterdir() if p.is_dir()):
        item = json.loads((item_dir / f"{item_dir.name}.json").read_text())
        for asset in item["assets"].values():
            asset["href"] = signed(f"{base_url}/{item_dir.name}/{asset['href'].removeprefix('./')}")
        (cat / item_dir.name).mkdir()
        (cat / item_dir.name / f"{item_dir.name}.json").write_text(json.dumps(item))
    return cat


def _all_text(root: Path) -> list[tuple[Path, str]]:
    out = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        out.append((p, p.read_bytes().decode("latin-1")))
    return out


@pytest.mark.slow
@pytest.mark.e2e
def test_pipeline_leaks_no_canary(
    canary_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from eoforge.runs.pipeline import run_plain

    monkeypatch.setenv("EOFORGE_ALLOWED_HOSTS", "127.0.0.1")
    install_log_redaction()  # what the CLI does first
    spec: dict[str, Any] = {
        "train": {
            "max_epochs": 1,
            "max_seconds": 20,
            "threads": 1,
            "base_channels": 4,
            "rf_n_estimators": 5,
            "rf_train_pixels": 5000,
        }
    }
    with RangeFileServer(BUNDLED_CATALOG) as files, caplog.at_level(logging.DEBUG):
        base = files.url
        spec["stac"] = {"catalog_dir": str(_signed_catalog(tmp_path, base))}
        run_plain(RunSpec.model_validate(spec), tmp_path / "run", tmp_path / "store")
    assert (tmp_path / "run" / "provenance.json").is_file()
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["stac_items"][0]["assets"]["blue"].startswith(base)
    for path, text in [*_all_text(tmp_path / "run"), *_all_text(tmp_path / "store")]:
        assert_clean(text, str(path))
    assert_clean(caplog.text, "log records")
    captured = capfd.readouterr()
    assert_clean(captured.out + captured.err, "stdout/stderr")
