"""The inference flow publishing to an object store (``out`` = ``s3://...``, ADR 0016), against
a real Prefect API, a real STAC API and a real moto_server."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from eoforge_test_helpers import tiny_exported_model  # type: ignore[import-not-found]

from eoforge.config import RunSpec
from eoforge.errors import InputError
from eoforge.runs.predict import model_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "eoforge-infer"
ITEM = "S2A_33TWL_20230815_0_L2A"


@pytest.fixture(scope="module")
def s3(aws_env: dict[str, str]) -> Any:
    """An s3fs file system on the module's moto_server, with the bucket made."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    return fs


def test_the_infer_flow_publishes_each_item_and_its_provenance(
    prefect_harness: None, stac_api: str, s3: Any, tmp_path: Path
) -> None:
    from eoforge.orchestration.flows.infer import infer_flow

    model = tiny_exported_model(tmp_path / "chips", tmp_path / "model")
    config = json.loads((model / "model.json").read_text())  # trained on the sample's units
    config["input_units"] = {b: {"offset": 0.0, "scale": 0.0001} for b in config["bands"]}
    (model / "model.json").write_text(json.dumps(config))
    spec = model_spec(RunSpec(), model)
    out = f"s3://{BUCKET}/infer"
    result = infer_flow(
        spec, out, str(tmp_path / "store"), stac_api, [ITEM], str(model), "test-event"
    )
    assert list(result["predictions"]) == [ITEM]
    assert result["predictions"][ITEM]["cog"] == f"s3://{BUCKET}/infer/predictions/{ITEM}.tif"
    names = {p[len(f"{BUCKET}/infer/") :] for p in s3.find(f"{BUCKET}/infer")}
    expected = {f"predictions/{ITEM}.tif", f"predictions/{ITEM}.json", f"uncertainty/{ITEM}.tif"}
    assert expected <= names
    [record] = [n for n in names if n.startswith("provenance/")]
    prov = json.loads(s3.cat_file(f"{BUCKET}/infer/{record}"))
    assert prov["trigger_event"] == "test-event"
    listed = {o["uri"]: o["sha256"] for o in prov["outputs"]}
    assert set(listed) == {f"{out}/{n}" for n in expected}
    for uri, digest in listed.items():  # what was recorded is what was published
        assert hashlib.sha256(s3.cat_file(uri.removeprefix("s3://"))).hexdigest() == digest
    local = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("eoforge-infer-*")]
    assert not [p for p in local if (p / "provenance" / Path(record).name).exists()]

    with pytest.raises(InputError, match="bucket does not exist"):
        infer_flow(spec, "s3://no-such-bucket/infer", str(tmp_path / "store"), stac_api,
                   [ITEM], str(model))  # fmt: skip
