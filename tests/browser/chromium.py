"""Debian's headless Chromium as the browser of the browser tests (flags from DESIGN.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.async_api import Browser, Playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
)


async def launch(pw: Playwright, *extra: str) -> Browser:
    # `make test` installs Debian's chromium: a missing one is a broken setup, not a skip.
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        "Debian chromium missing: `make test` installs it"
    )
    return await pw.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *extra])
