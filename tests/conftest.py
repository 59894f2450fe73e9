"""Shared fixtures: the golden tiny model, its images and prompts, and an isolated environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
MODEL_CONFIG = GOLDEN / "model" / "fade-golden.json"
WEIGHTS = GOLDEN / "model" / "fade-golden-seed0.pt"
QUERIES = GOLDEN / "images" / "queries"
CLS_PROMPTS = GOLDEN / "prompts" / "cls.json"
SEG_PROMPTS = GOLDEN / "prompts" / "seg.json"

# The golden cases also run on a GPU: FADE_TEST_DEVICE=cuda pytest tests/test_golden.py
GOLDEN_DEVICE = os.environ.get("FADE_TEST_DEVICE", "cpu")

# Options that make any engine command run the golden tiny model.
TINY_MODEL_ARGS = ["--model-config", str(MODEL_CONFIG), "--weights", str(WEIGHTS), "--device", "cpu"]
# ...and small sizes, for tests of behaviour rather than of numbers.
FAST_ARGS = TINY_MODEL_ARGS + ["--scales", "240,320", "--cls-size", "240"]


def write_sentence_files(folder: Path, normal: str, abnormal: str) -> tuple[Path, Path]:
    """ok.txt and ng.txt in ``folder``: the normal and abnormal sentence files of the text-file prompt plugins."""
    normal_file, abnormal_file = folder / "ok.txt", folder / "ng.txt"
    normal_file.write_text(normal)
    abnormal_file.write_text(abnormal)
    return normal_file, abnormal_file


def run_cli(args, **invoke_options):
    """``fade ARGS`` in-process through click's CliRunner (arguments may be paths); exceptions propagate."""
    from click.testing import CliRunner

    from fade_cli.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **invoke_options)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """No test touches the user's caches or the network."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FADE_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_config():
    from fade_cli.config import EngineConfig

    return EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", class_name="widget")


# Per module, not per session: Playwright's sync API keeps an event loop running in this thread while it is
# open, and asyncio.run() in any later test (the serve tests) would refuse to start.
@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright; missing, the tests fail (skip only with FADE_SKIP_BROWSER_TESTS=1)."""
    from report_support import SKIP_ENV, browser_unavailable, launch_chromium

    reason = browser_unavailable()
    if reason is not None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"browser tests skipped ({SKIP_ENV}=1): {reason}")
        pytest.fail(f"the report's browser tests need Chromium and Playwright: {reason} "
                    f"(or set {SKIP_ENV}=1 to skip them on purpose)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def lock_holders():
    """start(script, path): a process running ``script`` (which takes ``path`` and prints "held" once it holds a
    lock); every process started is killed at the end of the test."""
    started = []

    def start(script: str, path: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()
