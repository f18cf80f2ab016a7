"""A local STAC API: prepare a static catalog for ``rustac serve`` and run it on loopback.

:func:`prepare_served_catalog` validates the catalog's collection and item files (every item via
:func:`eoforge.stac.items.validate_item`, every asset href via the
:class:`~eoforge.io.hrefs.HrefPolicy`) and writes a copy rustac can load;
:class:`LocalStacServer` serves it (in-memory backend) on a free port.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from eoforge.errors import InputError, TransientError
from eoforge.io.hrefs import HrefPolicy, check_href
from eoforge.io.redact import redact
from eoforge.stac.items import validate_item

__all__ = ["LocalStacServer", "prepare_served_catalog", "served_catalog"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"STAC file '{path}' does not exist; check the catalog folder.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"STAC file '{path}' is not valid JSON ({exc}); repair or remove it."
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"STAC file '{path}' must hold a JSON object.")
    return data


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def prepare_served_catalog(
    catalog_dir: Path,
    work_dir: Path,
    include: Callable[[dict[str, Any]], bool] | None = None,
    policy: HrefPolicy | None = None,
) -> list[Path]:
    """Write a copy of a static catalog that ``rustac serve`` can load as an API.

    The collection loses its item links (rustac would otherwise load the linked originals too)
    and every asset href becomes an absolute ``file://`` URI (pystac would resolve a bare path
    against the API URL).

    Args:
        catalog_dir: folder with ``collection.json`` and one folder per item.
        work_dir: where the prepared files go (created).
        include: serve only the items for which this returns True (e.g. the first dates).
        policy: what asset hrefs may point at (default: files inside ``catalog_dir`` plus
            :meth:`HrefPolicy.from_env`, public hosts).

    Returns:
        The collection file followed by the item files, ready for ``rustac serve``.

    Raises:
        InputError: a missing or malformed collection or item file, an item link or asset
            href outside the catalog folder, or an href the policy refuses.
    """
    catalog_dir = Path(catalog_dir).resolve()
    policy = policy or HrefPolicy.from_env(roots=[catalog_dir])
    coll_path = catalog_dir / "collection.json"
    if not coll_path.is_file():
        raise InputError(
            f"catalog folder '{catalog_dir}' has no collection.json; point stac.catalog_dir at a "
            "static STAC catalog with a collection."
        )
    collection = _read_json(coll_path)
    if not isinstance(collection.get("id"), str) or not isinstance(
        collection.get("links", []), list
    ):
        raise InputError(
            f'collection \'{coll_path}\' needs a string "id" and a "links" list; fix it.'
        )
    prepared: list[dict[str, Any]] = []
    for link in collection.get("links", []):
        if not isinstance(link, dict) or link.get("rel") != "item":
            continue
        href = link.get("href")
        if not isinstance(href, str) or "://" in href or href.startswith("/"):
            raise InputError(
                f"item link {redact(str(href))!r} of collection '{coll_path}' must be a path "
                "relative to the catalog folder; fix the link."
            )
        src = (coll_path.parent / href).resolve()
        if not _inside(src, catalog_dir):
            raise InputError(
                f"item link '{href}' of collection '{coll_path}' points outside the catalog "
                f"folder '{catalog_dir}' (to '{src}'); fix the link."
            )
        item = validate_item(_read_json(src), f"STAC item file '{src}'")
        for key, asset in item["assets"].items():
            href = asset["href"]
            what = f"asset '{key}' of STAC item file '{src}'"
            if "://" not in href and not href.startswith("/"):
                resolved = (src.parent / href).resolve()
                if ".." in Path(href).parts or not _inside(resolved, catalog_dir):
                    raise InputError(
                        f"{what} has href '{href}', which climbs out of the catalog folder "
                        f"'{catalog_dir}' (to '{resolved}'); fix the href."
                    )
                href = resolved.as_uri()
            asset["href"] = check_href(href, policy, what=what)
        item["links"] = [
            lk
            for lk in item.get("links", [])
            if isinstance(lk, dict)
            and lk.get("rel") not in {"self", "parent", "root", "collection"}
        ]
        item["collection"] = collection["id"]
        if include is None or include(item):
            prepared.append(item)
    if not prepared:
        raise InputError(f"collection '{coll_path}' links no items; nothing to serve.")
    ids = [str(it["id"]) for it in prepared]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"collection '{coll_path}' links items with the same id {dupes}.")
    collection["links"] = [
        lk
        for lk in collection.get("links", [])
        if isinstance(lk, dict) and lk.get("rel") not in {"item", "child", "parent", "root", "self"}
    ]
    # everything checked: only now write (a refused catalog leaves nothing behind)
    work_dir.mkdir(parents=True, exist_ok=True)
    item_paths = []
    for item in prepared:
        dst = work_dir / f"{item['id']}.json"
        dst.write_text(json.dumps(item))
        item_paths.append(dst)
    coll_out = work_dir / "collection.json"
    coll_out.write_text(json.dumps(collection))
    return [coll_out, *sorted(item_paths)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rustac_exe() -> str:
    exe = Path(sys.executable).parent / "rustac"
    if exe.exists():
        return str(exe)
    found = shutil.which("rustac")
    if not found:
        raise InputError("the 'rustac' command is not installed; `pip install rustac`.")
    return found


@dataclass
class LocalStacServer:
    """A ``rustac serve`` STAC API (in-memory backend) on a free loopback port.

    Use as a context manager; ``url`` is the API root.
    """

    files: Sequence[Path]
    port: int = 0
    startup_timeout_s: float = 30.0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> LocalStacServer:
        if not self.port:
            self.port = _free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [_rustac_exe(), "serve", "--addr", f"127.0.0.1:{self.port}", *map(str, self.files)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TransientError(
                    f"rustac serve exited with code {self._proc.returncode} while starting on "
                    f"port {self.port}; see {self.log_path or 'its output'}."
                )
            try:
                if requests.get(self.url, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise TransientError(
            f"rustac serve did not answer on {self.url} within {self.startup_timeout_s} s."
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalStacServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def served_catalog(
    catalog_dir: Path, work_dir: Path, port: int = 0, log_path: Path | None = None
) -> Iterator[LocalStacServer]:
    """``rustac serve`` over the collection and items in ``catalog_dir``.

    The served copies (:func:`prepare_served_catalog`) are written to ``work_dir``; the server
    stops on exit.
    """
    files = prepare_served_catalog(catalog_dir, work_dir)
    with LocalStacServer(files, port=port, log_path=log_path) as server:
        yield server
