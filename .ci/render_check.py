"""Open every page of the built site in headless Chromium and check that it rendered.

Usage: ``python .ci/render_check.py SITE_DIR`` (after ``mkdocs build --strict``). Serves SITE_DIR
on a free loopback port and, for each HTML page, dumps the DOM Chromium built after running the
page's scripts (``chromium --headless --dump-dom``). A page passes when its DOM has the article,
the page's own first heading, the search input and the parts only Material's scripts make (the
js class, the button of each code block, the wrapper of each table); it fails on a 404 page or
an empty body. Two browsers run at a time. Exit 1 lists every failing page.
"""

from __future__ import annotations

import functools
import html
import http.server
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    sys.exit(f"no headless browser found (tried {', '.join(BROWSERS)}); apt-get install chromium")


def dump_dom(chromium: str, url: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own URL and a browser found on PATH
        [
            chromium,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout


def problems(source: str, dom: str) -> list[str]:
    found = []
    if "md-content__inner" not in dom or "<article" not in dom:
        found.append("no article in the rendered DOM")
    heading = re.search(r"<h1[^>]*>(.*?)</h1>", source, re.S)
    if heading:
        text = html.unescape(re.sub(r"<[^>]+>", "", heading.group(1))).strip()
        if text and text not in html.unescape(re.sub(r"<[^>]+>", "", dom)):
            found.append(f"heading {text!r} not in the rendered DOM")
    # Parts only Material's scripts make: the js class on <html>, a button on each code block,
    # a scrolling wrapper around each table.
    if not re.search(r'<html[^>]*class="[^"]*\bjs\b', dom):
        found.append("the page's scripts did not run (no js class on <html>)")
    if "<pre" in source and "md-code__button" not in dom and "md-clipboard" not in dom:
        found.append("code blocks have no copy button")
    if "<table" in source and "md-typeset__scrollwrap" not in dom:
        found.append("tables were not wrapped by the page's scripts")
    if 'data-md-component="search-query"' not in dom:
        found.append("no search input")
    if "404 - Not found" in dom:
        found.append("rendered as the 404 page")
    return found


def main() -> int:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "site").resolve()
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    if not pages:
        sys.exit(f"no pages in {site}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = browser()
    port = server.server_address[1]

    def check(page: Path) -> tuple[str, list[str]]:
        rel = page.relative_to(site).as_posix()
        dom = dump_dom(chromium, f"http://127.0.0.1:{port}/{rel}")
        return rel, problems(page.read_text(encoding="utf-8"), dom)

    failed = 0
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for rel, found in pool.map(check, pages):
                if found:
                    failed += 1
                    print(f"FAIL {rel}: {'; '.join(found)}")
                else:
                    print(f"ok   {rel}")
    finally:
        server.shutdown()
    print(f"{len(pages) - failed} of {len(pages)} pages rendered")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
