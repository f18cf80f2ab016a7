"""Reading ``s3://`` assets by configuration: a real S3 API (moto) holding the sample's COGs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from pydantic import ValidationError

from eoforge.config import S3ReadSpec
from eoforge.cube.build import write_cube
from eoforge.cube.remote import s3_gdal_options
from eoforge.cube.sources import local_path

VARS = ["blue", "green", "red", "nir", "scl"]
BUCKET = "eo-requester-pays"


def test_s3_options_follow_the_spec() -> None:
    assert s3_gdal_options(None) == {} == s3_gdal_options(S3ReadSpec())
    opts = s3_gdal_options(
        S3ReadSpec(requester_pays=True, region="us-west-2", endpoint_url="https://s3.example.org/")
    )
    assert opts == {
        "AWS_REQUEST_PAYER": "requester",
        "AWS_REGION": "us-west-2",
        "AWS_S3_ENDPOINT": "s3.example.org",
        "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    assert s3_gdal_options(S3ReadSpec(unsigned=True)) == {"AWS_NO_SIGN_REQUEST": "YES"}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"unsigned": True, "requester_pays": True}, "unsigned"),
        ({"endpoint_url": "s3.example.org"}, "http"),
        ({"requester_payz": True}, "requester_payz"),
    ],
)
def test_bad_s3_settings_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        S3ReadSpec.model_validate(fields)


def _bucket_items(
    items: list[dict[str, Any]], url: str, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """Upload the items' COGs to a requester-pays bucket; the items re-pointed at s3://."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_request_payment(Bucket=BUCKET, RequestPaymentConfiguration={"Payer": "Requester"})
    out = []
    for item in items:
        moved = copy.deepcopy(item)
        for var in VARS:
            src = local_path(item["assets"][var]["href"])
            assert src is not None
            key = f"{item['id']}/{Path(src).name}"
            s3.upload_file(str(src), BUCKET, key)
            moved["assets"][var]["href"] = f"s3://{BUCKET}/{key}"
        out.append(moved)
    return out


def test_credentialed_requester_pays_assets_load_like_local_files(
    moto_server: str,
    real_items: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = real_items[:2]
    remote = _bucket_items(items, moto_server, monkeypatch)
    spec = S3ReadSpec(requester_pays=True, region="us-east-1", endpoint_url=moto_server)
    write_cube(remote, VARS, tmp_path / "s3.zarr", label_variables=("scl",), s3=spec)
    write_cube(items, VARS, tmp_path / "local.zarr", label_variables=("scl",))
    a = zarr.open_group(str(tmp_path / "s3.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")
    assert sorted(a.group_keys()) == sorted(b.group_keys())
    for tile in a.group_keys():
        for var in VARS:
            assert np.array_equal(a[tile][var][...], b[tile][var][...]), (tile, var)
