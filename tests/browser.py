"""A real browser for tests: Debian's Chromium driven by Playwright (Python), headless.

Never `playwright install` (it downloads browsers); the `playwright` package only drives the
Chromium that `apt-get install chromium` put at /usr/bin/chromium. WebGL2 works through
SwiftShader without a GPU. A plain module like `peers`: tests import it as `browser`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import BrowserContext, sync_playwright

import peers

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium(profile_dir: Path, width: int = 1400, height: int = 900) -> Iterator[BrowserContext]:
    """A fresh Chromium profile (persistent context) with a ``width`` × ``height`` viewport."""
    executable = peers.require_binary("chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": width, "height": height},
            timeout=60_000,
        )
        try:
            yield context
        finally:
            context.close()


def red_pixels(png: bytes, margin: int = 60) -> int:
    """How many pixels of a screenshot are clearly red (the mask overlay colour over grey)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((r - g > margin) & (r - b > margin)))
