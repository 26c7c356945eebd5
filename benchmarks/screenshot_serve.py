"""The screenshots of docs/serve.md and the README: the web page driven in headless Chromium over real runs.

    .venv/bin/python benchmarks/screenshot_serve.py runs/ldm-quick runs/glide-quick runs/imagen-quick \
        runs/dalle-quick --out docs/

Not a figure: it checks the page end to end on trained runs (generate, then compare) and writes
serve.png and serve-compare.png. Needs Debian's chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--prompt", default="a red circle to the left of a blue square")
    ap.add_argument("--compare-prompt", default="two green triangles")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or sys.exit("no chromium: apt-get install -y chromium")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = tempfile.mkdtemp(prefix="t2i-shots-")
    server = subprocess.Popen([sys.executable, "-m", "t2i.cli", "serve", *args.runs, "--port", str(port),
                               "--out", served, "-q"])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/v1/runs", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            page.fill("#prompt", args.prompt)
            page.fill("#n", "4")
            page.fill("#seed", "0")
            page.click("#go")
            page.wait_for_function("() => [...document.querySelectorAll('#results figure img')]"
                                   ".filter(i => i.complete && i.naturalWidth > 0).length == 4", timeout=300_000)
            page.evaluate("window.scrollTo(0, 0)")
            out = Path(args.out)
            page.screenshot(path=str(out / "serve.png"))
            page.click("nav button[data-tab=cmp]")
            page.fill("#cprompt", args.compare_prompt)
            page.fill("#cn", "2")
            page.click("#cgo")
            page.wait_for_function("() => { const cols = document.querySelectorAll('#cout .col'); return cols.length > 0 &&"
                                   " document.querySelectorAll('#cout .col img').length == 2 * cols.length; }",
                                   timeout=600_000)
            page.screenshot(path=str(out / "serve-compare.png"), full_page=True)
            browser.close()
        print(f"wrote {out / 'serve.png'} and {out / 'serve-compare.png'}")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
