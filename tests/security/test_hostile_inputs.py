"""Hostile and bad input: each case is a clear error naming the input, and nothing is written.

Every case asserts the exception type (or the CLI's exit code), that the message names the
offending input, and that the folder the call writes to holds nothing new afterwards. Servers
(rustac, a redirecting server, a fake STAC API) run on loopback; nothing leaves the machine.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from eoforge_fault_proxy import RedirectServer  # type: ignore[import-not-found]

from eoforge.config import BUNDLED_CATALOG, ChipSpec, LabelSpec, StacSpec, load_run_spec
from eoforge.errors import ContractViolation, InputError
from eoforge.io.hrefs import HrefPolicy, check_href, check_redirects
from eoforge.stac.search import search_items
from eoforge.stac.server import LocalStacServer, prepare_served_catalog

BANDS = ("blue", "green", "red", "nir")
VARIABLES = [*BANDS, "scl"]
TWO_ITEMS = ("S2B_33TWL_20230810_0_L2A", "S2B_33TWM_20230810_0_L2A")


@pytest.fixture(autouse=True)
def _bundled_rasters_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small catalogs below link the bundled rasters in place, outside their own folder."""
    monkeypatch.setenv("EOFORGE_ALLOWED_ROOTS", str(BUNDLED_CATALOG))


def snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (to prove a failing call wrote nothing)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def expect_refusal(
    call: Callable[[], Any],
    root: Path,
    exc_type: type[BaseException],
    *names: str,
) -> BaseException:
    """Run ``call``: it must raise ``exc_type`` naming every one of ``names`` and write nothing
    under ``root``."""
    before = snapshot(root)
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    assert snapshot(root) == before, f"wrote {sorted(snapshot(root) - before)}"
    return info.value


# --------------------------------------------------------------------------- a small catalog


def mini_catalog(root: Path, items: tuple[str, ...] = TWO_ITEMS) -> Path:
    """A copy of two bundled items (JSON only; their rasters are linked from the bundle)."""
    cat = root / "catalog"
    cat.mkdir()
    coll = json.loads((BUNDLED_CATALOG / "collection.json").read_text())
    coll["links"] = [
        lk for lk in coll["links"] if lk["rel"] != "item" or lk["href"].split("/")[1] in items
    ]
    (cat / "collection.json").write_text(json.dumps(coll))
    for item_id in items:
        (cat / item_id).mkdir()
        src = BUNDLED_CATALOG / item_id
        item = json.loads((src / f"{item_id}.json").read_text())
        for asset in item["assets"].values():
            asset["href"] = (src / asset["href"]).resolve().as_uri()
        (cat / item_id / f"{item_id}.json").write_text(json.dumps(item))
    return cat


def edit_item(cat: Path, item_id: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    path = cat / item_id / f"{item_id}.json"
    item = json.loads(path.read_text())
    fn(item)
    path.write_text(json.dumps(item))


def set_href(key: str, href: str) -> Callable[[dict[str, Any]], None]:
    def edit(item: dict[str, Any]) -> None:
        item["assets"][key]["href"] = href

    return edit


CATALOG_CASES: dict[str, tuple[Callable[[Path], None], type[BaseException], tuple[str, ...]]] = {
    "collection-not-json": (
        lambda cat: (cat / "collection.json").write_text('{"id": "x", "links": ['),
        InputError,
        ("collection.json", "not valid JSON"),
    ),
    "item-truncated-json": (
        lambda cat: (cat / TWO_ITEMS[0] / f"{TWO_ITEMS[0]}.json").write_text('{"type": "Feat'),
        InputError,
        (f"{TWO_ITEMS[0]}.json", "not valid JSON"),
    ),
    "item-is-a-list": (
        lambda cat: (cat / TWO_ITEMS[0] / f"{TWO_ITEMS[0]}.json").write_text("[1, 2]"),
        InputError,
        (f"{TWO_ITEMS[0]}.json", "JSON object"),
    ),
    "item-without-assets": (
        lambda cat: edit_item(cat, TWO_ITEMS[0], lambda it: it.pop("assets")),
        InputError,
        (TWO_ITEMS[0], "assets"),
    ),
    "item-id-with-path": (
        lambda cat: edit_item(cat, TWO_ITEMS[0], lambda it: it.update(id="../../evil")),
        InputError,
        ("../../evil", "file name"),
    ),
    "asset-without-href": (
        lambda cat: edit_item(cat, TWO_ITEMS[0], lambda it: it["assets"]["red"].pop("href")),
        InputError,
        ("asset 'red'", TWO_ITEMS[0], "no href"),
    ),
    "asset-dotdot-traversal": (
        lambda cat: edit_item(cat, TWO_ITEMS[0], set_href("blue", "../../../../../etc/passwd")),
        InputError,
        ("asset 'blue'", "../../../../../etc/passwd", "climbs out"),
    ),
    "asset-file-outside-roots": (
        lambda cat: edit_item(cat, TWO_ITEMS[0], set_href("nir", "file:///etc/passwd")),
        InputError,
        ("asset 'nir'", "/etc/passwd", "outside the allowed folder"),
    ),
    "asset-cloud-metadata": (
        lambda cat: edit_item(
            cat, TWO_ITEMS[1], set_href("scl", "http://169.254.169.254/latest/meta-data/")
        ),
        InputError,
        ("asset 'scl'", "169.254.169.254", "link-local"),
    ),
    "item-link-outside-catalog": (
        lambda cat: (cat / "collection.json").write_text(
            json.dumps(
                {
                    "type": "Collection",
                    "id": "sentinel-2-l2a",
                    "links": [{"rel": "item", "href": "../../elsewhere/item.json"}],
                }
            )
        ),
        InputError,
        ("../../elsewhere/item.json", "outside the catalog"),
    ),
    "item-crosses-antimeridian": (
        lambda cat: edit_item(
            cat, TWO_ITEMS[0], lambda it: it.update(bbox=[179.5, -17.0, -179.6, -16.0])
        ),
        InputError,
        (TWO_ITEMS[0], "antimeridian"),
    ),
}


@pytest.mark.parametrize("case", sorted(CATALOG_CASES))
def test_hostile_static_catalog_is_refused_before_serving(case: str, tmp_path: Path) -> None:
    edit, exc_type, names = CATALOG_CASES[case]
    cat = mini_catalog(tmp_path)
    edit(cat)
    expect_refusal(
        lambda: prepare_served_catalog(cat, tmp_path / "served"), tmp_path, exc_type, *names
    )
    assert not (tmp_path / "served").exists()


# --------------------------------------------------------------------------- href policy

HREF_CASES = {
    "file-outside-roots": ("file:///etc/passwd", "outside the allowed folder"),
    "bare-path-outside-roots": ("/etc/shadow", "outside the allowed folder"),
    "file-encoded-dotdot": ("file:///data/cat/%2e%2e/%2e%2e/etc/passwd", "climbs out"),
    "file-remote-host": ("file://fileserver/share/B02.tif", "remote host"),
    "link-local-metadata": ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
    "ipv4-mapped-ipv6": ("http://[::ffff:169.254.169.254]/latest/", "link-local"),
    "decimal-ip": ("http://2852039166/latest/meta-data/", "link-local"),
    "private-10": ("http://10.0.0.7/B02.tif", "private address"),
    "private-192": ("https://192.168.1.20:8443/B02.tif", "private address"),
    "loopback-127": ("http://127.0.0.1:9/B02.tif", "loopback"),
    "localhost-name": ("http://localhost/B02.tif", "loopback"),
    "loopback-ipv6": ("http://[::1]/B02.tif", "loopback"),
    "credentials-in-url": ("https://user:hunter2@example.com/B02.tif", "credentials"),
    "ftp-scheme": ("ftp://example.com/B02.tif", "scheme 'ftp'"),
    "gdal-vsi-path": ("/vsicurl/http://169.254.169.254/x", "outside the allowed folder"),
    "relative": ("B02.tif", "relative"),
    "url-dotdot": ("https://example.com/cogs/../../admin/secret.tif", "climbs out"),
}


@pytest.mark.parametrize("case", sorted(HREF_CASES))
def test_href_policy_refuses(case: str, tmp_path: Path) -> None:
    href, why = HREF_CASES[case]
    policy = HrefPolicy(roots=(tmp_path,), resolve=False)
    shown = href.split("@")[-1] if "@" in href else href
    err = expect_refusal(
        lambda: check_href(href, policy, what="asset 'blue' of item 'X'"),
        tmp_path,
        InputError,
        "asset 'blue' of item 'X'",
        why,
    )
    assert shown.split("?")[0][:20] in str(err)
    assert "hunter2" not in str(err)


def test_href_policy_allows_what_it_should(tmp_path: Path) -> None:
    policy = HrefPolicy(roots=(tmp_path,), hosts=("127.0.0.1",), resolve=False)
    inside = tmp_path / "a" / "B02.tif"
    assert check_href(inside.as_uri(), policy) == inside.as_uri()
    assert check_href(str(inside), policy) == inside.as_uri()
    assert check_href("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B02.tif", policy)
    assert check_href("s3://sentinel-cogs/x/B02.tif", policy)
    assert check_href("http://127.0.0.1:8080/x/B02.tif", policy)


def test_symlink_out_of_the_catalog_is_refused(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "escape").symlink_to("/etc")
    policy = HrefPolicy(roots=(cat,), resolve=False)
    expect_refusal(
        lambda: check_href((cat / "escape" / "passwd").as_uri(), policy),
        tmp_path,
        InputError,
        "/etc/passwd",
        "outside the allowed folder",
    )


# --------------------------------------------------------------------------- redirects


@pytest.fixture()
def redirect_to() -> Iterator[Callable[[str], str]]:
    servers: list[Any] = []

    def start(target: str) -> str:
        server = RedirectServer(target).start()
        servers.append(server)
        return str(server.url)

    yield start
    for s in servers:
        s.stop()


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://example.org/mirror", "example.org"),
    ],
)
def test_redirect_to_another_host_is_refused(
    redirect_to: Callable[[str], str], tmp_path: Path, target: str, named: str
) -> None:
    base = redirect_to(target)
    policy = HrefPolicy(hosts=("127.0.0.1",), resolve=False)
    expect_refusal(
        lambda: check_redirects(f"{base}/B02.tif", policy, what="asset 'blue'", retries=0),
        tmp_path,
        InputError,
        "asset 'blue'",
        named,
        "redirects to",
    )


def test_redirect_on_the_same_host_is_followed(redirect_to: Callable[[str], str]) -> None:
    from eoforge_fault_proxy import RangeFileServer  # type: ignore[import-not-found]

    with RangeFileServer(BUNDLED_CATALOG) as files:
        base = redirect_to(files.url)  # another port of 127.0.0.1, which the policy allows
        policy = HrefPolicy(hosts=("127.0.0.1",), resolve=False)
        item = TWO_ITEMS[0]
        final = check_redirects(f"{base}/{item}/B02.tif", policy, retries=0)
        assert final == f"{files.url}/{item}/B02.tif"


def test_search_refuses_assets_redirecting_to_metadata_service(
    redirect_to: Callable[[str], str], tmp_path: Path
) -> None:
    base = redirect_to("http://169.254.169.254/latest/meta-data")
    cat = mini_catalog(tmp_path)
    edit_item(cat, TWO_ITEMS[0], set_href("green", f"{base}/B03.tif"))
    policy = HrefPolicy(roots=(cat, BUNDLED_CATALOG), hosts=("127.0.0.1",), resolve=False)
    files = prepare_served_catalog(cat, tmp_path / "served", policy=policy)
    with LocalStacServer(files) as api:
        expect_refusal(
            lambda: search_items(StacSpec(max_retries=0), api.url),
            tmp_path,
            InputError,
            f"asset 'green' of STAC item '{TWO_ITEMS[0]}'",
            "169.254.169.254",
        )


def test_search_refuses_items_missing_a_required_band(tmp_path: Path) -> None:
    cat = mini_catalog(tmp_path)
    edit_item(cat, TWO_ITEMS[1], lambda it: it["assets"].pop("nir"))
    files = prepare_served_catalog(cat, tmp_path / "served")
    with LocalStacServer(files) as api:
        expect_refusal(
            lambda: search_items(StacSpec(), api.url),
            tmp_path,
            InputError,
            TWO_ITEMS[1],
            "['nir']",
        )


def test_search_bbox_across_antimeridian_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="antimeridian"):  # refused when the spec is built
        StacSpec(bbox=(179.0, -18.0, -179.0, -16.0))
    spec = StacSpec.model_construct(bbox=(179.0, -18.0, -179.0, -16.0))  # and by search itself
    expect_refusal(
        lambda: search_items(spec, "http://127.0.0.1:9/"), tmp_path, InputError, "antimeridian"
    )


# --------------------------------------------------------------------------- a hostile STAC API


class _FakeApi(BaseHTTPRequestHandler):
    mode = "ok"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.mode == "broken-json":
            self._send(b'{"type": "Catalog", "id": "x", "links": [')
            return
        if self.path.startswith("/search"):
            if self.mode == "foreign-next":
                item = json.loads(
                    (BUNDLED_CATALOG / TWO_ITEMS[0] / f"{TWO_ITEMS[0]}.json").read_text()
                )
                item["links"] = []
                page = {
                    "type": "FeatureCollection",
                    "features": [item],
                    "links": [{"rel": "next", "href": "http://169.254.169.254/search?page=2"}],
                }
            elif self.mode == "relative-links":
                item = json.loads(
                    (BUNDLED_CATALOG / TWO_ITEMS[0] / f"{TWO_ITEMS[0]}.json").read_text()
                )
                page = {"type": "FeatureCollection", "features": [item], "links": []}
            else:  # bad-item
                page = {
                    "type": "FeatureCollection",
                    "features": [
                        {"type": "Feature", "id": "half-an-item", "stac_version": "1.0.0"}
                    ],
                    "links": [],
                }
            self._send(json.dumps(page).encode())
            return
        landing = {
            "type": "Catalog",
            "id": "fake",
            "stac_version": "1.0.0",
            "description": "hostile",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
            ],
            "links": [
                {"rel": "self", "href": f"{base}/"},
                {"rel": "root", "href": f"{base}/"},
                {"rel": "search", "href": f"{base}/search", "method": "GET"},
                {"rel": "search", "href": f"{base}/search", "method": "POST"},
            ],
        }
        self._send(json.dumps(landing).encode())

    do_GET = do_POST = _answer


@pytest.fixture()
def fake_api() -> Iterator[Callable[[str], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(mode: str) -> str:
        handler = type("Handler", (_FakeApi,), {"mode": mode})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("broken-json", ("invalid JSON",)),
        ("foreign-next", ("169.254.169.254", "another host")),
        ("bad-item", ("malformed",)),
        ("relative-links", ("malformed", "Relative path")),
    ],
)
def test_hostile_stac_api_is_refused(
    fake_api: Callable[[str], str], tmp_path: Path, mode: str, names: tuple[str, ...]
) -> None:
    url = fake_api(mode)
    spec = StacSpec(max_retries=1, backoff_factor=0.01, timeout_s=5)
    expect_refusal(lambda: search_items(spec, url), tmp_path, InputError, url.rstrip("/"), *names)


# --------------------------------------------------------------------------- cube


def _items_of_tile(items: list[dict[str, Any]], tile: str, n: int = 2) -> list[dict[str, Any]]:
    return copy.deepcopy([it for it in items if tile in it["id"]][:n])


def test_mixed_crs_in_one_tile_names_both_epsgs(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    from eoforge.cube.build import write_cube

    items = _items_of_tile(real_items, "33TWL")
    items[1]["properties"]["proj:epsg"] = 32634
    expect_refusal(
        lambda: write_cube(items, VARIABLES, tmp_path / "cube.zarr"),
        tmp_path,
        InputError,
        "EPSG:32633",
        "EPSG:32634",
        "33TWL",
        items[1]["id"],
    )


def test_all_nodata_scene_is_a_contract_violation(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    from eoforge.cube.build import write_cube

    items = _items_of_tile(real_items, "33TWM")
    src = items[1]["assets"]["blue"]["href"].removeprefix("file://")
    with rasterio.open(src) as ds:
        profile = ds.profile
    empty = tmp_path / "rasters" / "B02-empty.tif"
    empty.parent.mkdir()
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), profile["dtype"]))
    items[1]["assets"]["blue"]["href"] = empty.as_uri()
    err = expect_refusal(
        lambda: write_cube(items, VARIABLES, tmp_path / "cube.zarr"),
        tmp_path,
        ContractViolation,
        items[1]["id"],
        "'blue'",
        "valid_fraction",
    )
    assert isinstance(err, ContractViolation) and err.exit_code == 3


def test_scene_across_antimeridian_is_refused_by_ingest(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    from eoforge.cube.build import write_cube

    items = _items_of_tile(real_items, "33TWL")
    items[0]["bbox"] = [179.7, 64.0, -179.2, 65.0]
    expect_refusal(
        lambda: write_cube(items, VARIABLES, tmp_path / "cube.zarr"),
        tmp_path,
        InputError,
        items[0]["id"],
        "antimeridian",
    )


def test_torn_cube_is_never_read_as_valid(real_cube: Path, tmp_path: Path) -> None:
    from eoforge.cube.build import open_tile, verify_cube

    torn = tmp_path / "cube.zarr"
    shutil.copytree(real_cube, torn)
    verify_cube(torn, deep=True)
    chunk = torn / "33TWM" / "nir" / "c" / "2" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()  # what a half-copied store looks like: a missing chunk reads as fill value
    expect_refusal(lambda: open_tile(torn, "33TWM"), tmp_path, InputError, str(torn), "torn")


# --------------------------------------------------------------------------- labels


def _polygon_file(tmp_path: Path, name: str, rows: list[tuple[str, Any]], crs: str | None) -> Path:
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        {"class": [c for c, _ in rows]}, geometry=[g for _, g in rows], crs=crs
    )
    path = tmp_path / "labels" / name
    path.parent.mkdir(exist_ok=True)
    frame.to_file(path, driver="GeoJSON")
    return path


def _in_tile(x0: float = 540_000, y0: float = 5_050_000, size: float = 5_000) -> Any:
    from shapely.geometry import box

    return box(x0, y0, x0 + size, y0 + size)


def _chips_with(labels: Any, tmp_path: Path, cube: Path) -> Callable[[], Any]:
    from eoforge.chips.cut import build_chips

    def call() -> Any:
        return build_chips(
            cube, tmp_path / "chips.zarr", ChipSpec(), LabelSpec(), BANDS, label_source=labels
        )

    return call


def test_label_with_unknown_class_is_refused(real_cube: Path, tmp_path: Path) -> None:
    from eoforge.labels.polygons import PolygonLabels

    path = _polygon_file(
        tmp_path,
        "lava.geojson",
        [("vegetation", _in_tile()), ("lava", _in_tile(560_000))],
        "EPSG:32633",
    )
    expect_refusal(
        _chips_with(PolygonLabels(str(path)), tmp_path, real_cube),
        tmp_path,
        InputError,
        str(path),
        "lava",
    )


def test_label_with_broken_geometry_is_refused(real_cube: Path, tmp_path: Path) -> None:
    from shapely.geometry import Polygon

    from eoforge.labels.polygons import PolygonLabels

    bowtie = Polygon(
        [(540_000, 5_050_000), (545_000, 5_055_000), (545_000, 5_050_000), (540_000, 5_055_000)]
    )
    path = _polygon_file(tmp_path, "bowtie.geojson", [("water", bowtie)], "EPSG:32633")
    expect_refusal(
        _chips_with(PolygonLabels(str(path), on_invalid="error"), tmp_path, real_cube),
        tmp_path,
        InputError,
        str(path),
        "invalid geometr",
    )


def test_label_that_repairs_to_nothing_is_refused(real_cube: Path, tmp_path: Path) -> None:
    from shapely.geometry import Polygon

    from eoforge.labels.polygons import PolygonLabels

    sliver = Polygon([(540_000, 5_050_000), (545_000, 5_050_000), (542_000, 5_050_000)])
    path = _polygon_file(tmp_path, "sliver.geojson", [("water", sliver)], "EPSG:32633")
    expect_refusal(
        _chips_with(PolygonLabels(str(path)), tmp_path, real_cube), tmp_path, InputError, str(path)
    )


def test_labels_outside_the_area_are_refused(real_cube: Path, tmp_path: Path) -> None:
    from shapely.geometry import box

    from eoforge.labels.polygons import PolygonLabels

    path = _polygon_file(
        tmp_path, "far.geojson", [("water", box(13.0, 40.0, 13.1, 40.1))], "EPSG:4326"
    )
    expect_refusal(
        _chips_with(PolygonLabels(str(path)), tmp_path, real_cube),
        tmp_path,
        InputError,
        str(path),
        "cover nothing",
    )


def test_label_file_that_is_not_vector_data_is_refused(real_cube: Path, tmp_path: Path) -> None:
    from eoforge.labels.polygons import PolygonLabels

    path = tmp_path / "labels" / "garbage.geojson"
    path.parent.mkdir()
    path.write_bytes(b"\x00\x01 this is not geojson")
    expect_refusal(
        _chips_with(PolygonLabels(str(path)), tmp_path, real_cube),
        tmp_path,
        InputError,
        str(path),
        "cannot be read",
    )


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("yaml_body", "named"),
    [
        ("chips:\n  size: 0\n", "size"),
        ("chips:\n  size: -64\n", "size"),
        ("chips:\n  stride: 0\n", "stride"),
        ("infer:\n  window: 0\n", "window"),
        ("infer:\n  window: -256\n", "window"),
        ("infer:\n  window: 64\n  overlap: 64\n", "overlap"),
    ],
)
def test_zero_or_negative_sizes_are_refused(tmp_path: Path, yaml_body: str, named: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_body)
    expect_refusal(lambda: load_run_spec(cfg), tmp_path, InputError, str(cfg), named)


def test_chip_larger_than_the_scene_is_refused(real_cube: Path, tmp_path: Path) -> None:
    from eoforge.chips.cut import build_chips

    spec = ChipSpec(size=1024, stride=1024)
    expect_refusal(
        lambda: build_chips(real_cube, tmp_path / "chips.zarr", spec, LabelSpec(), BANDS),
        tmp_path,
        InputError,
        "1024",
    )


# --------------------------------------------------------------------------- model files


def _model_dir(tmp_path: Path, weights_name: str = "model.safetensors") -> Path:
    from eoforge.training.files import MODEL_FORMAT

    d = tmp_path / "model"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"format": MODEL_FORMAT, "weights": weights_name}))
    return d


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    from eoforge.training.files import load_model

    d = _model_dir(tmp_path)
    torch.save({"w": torch.zeros(2)}, d / "model.safetensors")  # a pickle in disguise
    expect_refusal(lambda: load_model(d), tmp_path, InputError, "model.safetensors", "pickle")


@pytest.mark.parametrize("weights", ["model.pt", "../../outside.safetensors"])
def test_weights_other_than_local_safetensors_are_refused(tmp_path: Path, weights: str) -> None:
    from eoforge.training.files import load_model

    d = _model_dir(tmp_path, weights)
    expect_refusal(lambda: load_model(d), tmp_path, InputError, weights, "safetensors")


def _onnx_with_external(tmp_path: Path, location: str | None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w],
    )
    model = helper.make_model(graph)
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(d / "model.onnx"))
    if location is not None:
        m = onnx.load(str(d / "model.onnx"), load_external_data=False)
        for entry in m.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(m, str(d / "model.onnx"))
    return d / "model.onnx"


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("../../../../etc/passwd", "climbs out"),
        ("/etc/passwd", "absolute"),
        ("escape/passwd", "outside the model folder"),
        ("missing.bin", "does not exist"),
    ],
)
def test_onnx_external_data_outside_its_folder_is_refused(
    tmp_path: Path, location: str, named: str
) -> None:
    from eoforge.inference.safety import check_onnx_external_data

    onnx_path = _onnx_with_external(tmp_path, location)
    (onnx_path.parent / "escape").symlink_to("/etc")
    expect_refusal(
        lambda: check_onnx_external_data(onnx_path),
        tmp_path,
        InputError,
        str(onnx_path),
        location,
        named,
    )


def test_onnx_external_data_inside_its_folder_is_accepted(tmp_path: Path) -> None:
    from eoforge.inference.safety import check_onnx_external_data

    assert check_onnx_external_data(_onnx_with_external(tmp_path, None)) == ["weights.bin"]


def test_onnx_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    from eoforge.inference.safety import check_onnx_external_data

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07\xff\xff not a protobuf")
    expect_refusal(lambda: check_onnx_external_data(bad), tmp_path, InputError, str(bad))


# --------------------------------------------------------------------------- the CLI


def _cli(tmp_path: Path, yaml_body: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_body)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PREFECT_HOME=str(tmp_path / ".prefect-home"),
        COLUMNS="1000",  # rich would wrap long paths in the middle
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "eoforge.cli",
            "run",
            "--config",
            str(cfg),
            "--plain",
            "--out",
            str(tmp_path / "out"),
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _hostile_catalog_yaml(tmp_path: Path, edit: Callable[[Path], None]) -> str:
    cat = mini_catalog(tmp_path)
    edit(cat)
    return f"stac:\n  catalog_dir: {cat}\n"


CLI_CASES: dict[str, tuple[Callable[[Path], str], int, tuple[str, ...]]] = {
    "chip-size-zero": (lambda tmp: "chips:\n  size: 0\n", 2, ("run.yaml", "size")),
    "bbox-across-antimeridian": (
        lambda tmp: "stac:\n  bbox: [179.0, -18.0, -179.0, -16.0]\n",
        2,
        ("antimeridian",),
    ),
    "catalog-asset-outside-roots": (
        lambda tmp: _hostile_catalog_yaml(
            tmp, lambda cat: edit_item(cat, TWO_ITEMS[0], set_href("blue", "file:///etc/passwd"))
        ),
        2,
        ("/etc/passwd", "refused"),
    ),
    "catalog-malformed-item": (
        lambda tmp: _hostile_catalog_yaml(
            tmp,
            lambda cat: (cat / TWO_ITEMS[1] / f"{TWO_ITEMS[1]}.json").write_text("{oops"),
        ),
        2,
        (f"{TWO_ITEMS[1]}.json", "not valid JSON"),
    ),
}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_bad_input_with_exit_code_and_writes_nothing(case: str, tmp_path: Path) -> None:
    make_yaml, code, names = CLI_CASES[case]
    body = make_yaml(tmp_path)
    before = snapshot(tmp_path) | {"run.yaml"}
    proc = _cli(tmp_path, body)
    assert proc.returncode == code, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())  # rich wraps long lines
    for name in names:
        assert name in text, f"{name!r} not in: {proc.stderr[-2000:]}"
    after = {p for p in snapshot(tmp_path) if not p.startswith(".prefect-home")}
    assert after == before, f"wrote {sorted(after - before)}"
