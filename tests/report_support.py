"""Helpers of the report tests and of benchmarks/bench_report.py: Debian's Chromium through Playwright,
and synthetic run folders of any size."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Optional

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Only this lets the browser tests skip (a machine without Chromium, said out loud); CI never sets it.
SKIP_ENV = "FADE_SKIP_BROWSER_TESTS"


def browser_unavailable() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install '.[test]'"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)"
    return None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _jpeg(colour: tuple[int, int, int], size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def synthetic_run(folder: Path, count: int, seed: int = 0, thumbnails: bool = True) -> list[dict]:
    """A detect run folder of ``count`` rows in folders good/ and scratch/ (some with errors),
    with image and map thumbnails; returns the rows as written to results.jsonl."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {"image": _jpeg((190, 160, 110)), "map": _jpeg((40, 90, 220))}
    rows = []
    for index in range(count):
        group = "good" if index % 3 else "scratch"
        path = f"{group}/part_{index:06d}.png"
        if index % 97 == 13:
            rows.append({"path": path, "score": None, "language_score": None, "vision_score": None, "verdict": None,
                         "map_path": None, "heatmap_path": None, "mask_path": None, "regions": None,
                         "error": f"{path}: cannot decode image"})
            continue
        score = rng.betavariate(2, 5) if group == "good" else rng.betavariate(5, 2)
        rows.append({"path": path, "score": score, "language_score": score * 0.9, "vision_score": min(1.0, score * 1.1),
                     "verdict": None, "map_path": None, "heatmap_path": None, "mask_path": None, "regions": None,
                     "error": None})
        if thumbnails:
            for kind, data in pictures.items():
                target = folder / "thumbnails" / kind / f"{path}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    (folder / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows




def file_url(path: Path) -> str:
    return path.resolve().as_uri()




class OpenReport:
    """A report opened in a fresh browser page, recording console messages, page errors, requests and dialogs."""

    def __init__(self, browser, path: Path, viewport=(1280, 900)):
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.page = self.context.new_page()
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda message: self.console.append((message.type, message.text)))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)
        self.page.goto(file_url(path))
        self.page.wait_for_selector("body[data-ready='1']", timeout=10_000)

    def problems(self) -> list:
        """Console errors and warnings, page errors, dialogs and requests that are not file:// (should be none)."""
        bad_console = [m for m in self.console if m[0] in ("error", "warning")]
        outside = [url for url in self.requests if not url.startswith("file://")]
        return bad_console + self.errors + self.dialogs + outside

    def close(self) -> None:
        self.context.close()
