"""Open a page in a real headless Chromium (Playwright driving the system's ``chromium``) and
report what a reader would see broken: images that did not load, console errors, failed loads.

Playwright's own browser download needs the internet; the system browser (Debian's
``chromium``, installed by ``.ci/run``) is used instead through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PageCheck", "browser_missing", "check_page", "chromium_path"]

_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class PageCheck:
    """What loading a page showed."""

    #: ``src`` of every ``<img>`` whose picture did not load (naturalWidth 0).
    broken_images: list[str] = field(default_factory=list)
    #: Console messages of type error, and uncaught page errors.
    console_errors: list[str] = field(default_factory=list)
    #: URLs of requests that failed (missing file, refused).
    failed_requests: list[str] = field(default_factory=list)
    #: Number of ``<img>`` elements on the page.
    images: int = 0
    #: The page's visible text.
    text: str = ""

    @property
    def problems(self) -> list[str]:
        return [
            *(f"broken image {s}" for s in self.broken_images),
            *(f"console error {m}" for m in self.console_errors),
            *(f"failed request {u}" for u in self.failed_requests),
        ]


def chromium_path() -> Path | None:
    """The Chromium to drive: ``$EOFORGE_CHROMIUM``, else ``chromium`` on the PATH."""
    found = os.environ.get("EOFORGE_CHROMIUM") or shutil.which("chromium")
    return Path(found) if found and Path(found).is_file() else None


def browser_missing() -> str | None:
    """Why no page can be checked here (None: Chromium and Playwright are both installed)."""
    if chromium_path() is None:
        return "no chromium on PATH (apt-get install chromium, or set EOFORGE_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def check_page(
    page_file: Path, screenshot: Path | None = None, width: int = 1200, timeout_s: float = 60.0
) -> PageCheck:
    """Load ``page_file`` from disk (``file://``) and collect what is broken.

    Args:
        page_file: the HTML file.
        screenshot: write a full-page PNG here as well.
        width: viewport width in CSS pixels.
        timeout_s: page load limit.

    Returns:
        The broken images, console errors and failed requests (all empty for a good page).
    """
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError(browser_missing() or "no chromium")
    out = PageCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(exe), args=_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on(
                "console",
                lambda m: out.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: out.console_errors.append(str(e)))
            page.on("requestfailed", lambda r: out.failed_requests.append(r.url))
            page.goto(Path(page_file).resolve().as_uri(), timeout=timeout_s * 1000)
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])"
            )
            out.images = len(sizes)
            out.broken_images = [str(s) for s, complete, w in sizes if not complete or w == 0]
            out.text = page.inner_text("body")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out
