"""Report build time and time to interactive in headless Chromium, for synthetic runs (not a test).

    python benchmarks/bench_report.py                 # 1,000 and 20,000 rows
    python benchmarks/bench_report.py --rows 5000

A synthetic detect run (results.jsonl and thumbnails) is written to a temporary
folder; the build time is `fade report`'s (thumbnails already there, as after
`fade detect --out`), the time to interactive is from navigation until the page
has rendered and has answered a threshold change with new OK/NG counts, both on the
page's own clock (performance.now(), from navigation start). Needs
Debian's chromium and playwright (`pip install '.[test]'`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from report_support import browser_unavailable, file_url, launch_chromium, synthetic_run  # noqa: E402

from fade_cli.report.build import build_report  # noqa: E402


def time_to_interactive(browser, page_path: Path) -> tuple[float, float]:
    """(seconds until rendered, seconds until a threshold change has updated the counts)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(file_url(page_path))
    page.wait_for_selector("body[data-ready='1']")
    ready_ms = float(page.get_attribute("body", "data-ready-ms"))  # the page's clock, from navigation start
    before = page.text_content("#count-ng")
    change_ms = page.evaluate(
        "() => { const box = document.getElementById('threshold-input'), t = performance.now();"
        " box.value = '0.999'; box.dispatchEvent(new Event('input')); return performance.now() - t; }")
    assert page.text_content("#count-ng") != before or before == "0"
    page.close()
    return ready_ms / 1000, (ready_ms + change_ms) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,20000", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reason = browser_unavailable()
    if reason:
        sys.exit(f"cannot run the browser: {reason}")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as temp, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        print(f"{'rows':>8} {'build s':>8} {'page MB':>8} {'rendered s':>11} {'interactive s':>14}")
        for count in (int(part) for part in args.rows.split(",")):
            run = Path(temp) / f"run{count}"
            synthetic_run(run, count)
            builds, pages = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                page_path = build_report(run)
                builds.append(time.perf_counter() - started)
                pages.append(time_to_interactive(browser, page_path))
            size = page_path.stat().st_size / 1e6
            rendered = min(p[0] for p in pages)
            interactive = min(p[1] for p in pages)
            print(f"{count:>8} {min(builds):>8.2f} {size:>8.1f} {rendered:>11.2f} {interactive:>14.2f}")
        browser.close()


if __name__ == "__main__":
    main()
