"""Opening report pages in a real headless Chromium (Debian's package) with no network."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from conftest import apt_install

# As the machine's own browser checks start it: no background traffic, no first-run work.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's Chromium, installed with apt-get when missing and we are allowed to."""
    path = shutil.which("chromium")
    if path is None:
        apt_install("chromium")
        path = shutil.which("chromium")
    if path is None:
        raise RuntimeError(
            "the report tests need Debian's Chromium: `apt-get install chromium` (as root)"
        )
    return path


@dataclass
class PageCheck:
    """What happened while one page loaded."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    code_inputs: int = 0
    local_links: list[str] = field(default_factory=list)
    title: str = ""
    text: str = ""
    content_security_policy: str | None = None
    probe: object = None


class Browser:
    """One headless Chromium for a test session; ``check`` opens a page and reports."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )

    def close(self):
        self._browser.close()
        self._playwright.stop()

    def check(
        self, page_path: Path, screenshot: Path | None = None, probe: str | None = None
    ) -> PageCheck:
        """Open a page offline; ``probe`` is a JavaScript function (it may be async) whose
        result goes to ``PageCheck.probe``."""
        result = PageCheck(page_path.resolve().as_uri())
        context = self._browser.new_context(offline=True, viewport={"width": 1100, "height": 900})

        def route(request_route):
            url = request_route.request.url
            if url.startswith(("file:", "data:")):
                request_route.continue_()
            else:
                result.outside_requests.append(url)
                request_route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on(
            "console",
            lambda m: result.console_errors.append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: result.page_errors.append(str(e)))
        page.on("requestfailed", lambda r: result.failed_requests.append(r.url))

        def dialog(d):
            result.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(result.url, wait_until="load")
        page.wait_for_load_state("networkidle")
        result.broken_images = page.evaluate(
            "Array.from(document.images)"
            ".filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.alt || i.src.slice(0, 60))"
        )
        result.images = page.evaluate("document.images.length")
        result.code_inputs = page.evaluate(
            "document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-InputPrompt,"
            " .input_area, .jp-CodeMirrorEditor, textarea').length"
        )
        result.local_links = page.evaluate(
            "Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"
            ".filter(h => !h.startsWith('#'))"
        )
        if probe is not None:
            result.probe = page.evaluate(probe)
        result.title = page.title()
        result.content_security_policy = page.evaluate(
            "document.querySelector('head meta[http-equiv=\"Content-Security-Policy\"]')"
            "?.content ?? null"
        )
        result.text = page.inner_text("body")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        context.close()
        return result
