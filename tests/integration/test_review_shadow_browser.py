"""A shadow version's mask as a second opinion in the review app, in a real browser.

radloop's API app serves a store holding the real T1 series with an AI SEG (a ball) and a
shadow version's SEG of the same job (the ball moved); Debian's Chromium (Playwright, headless,
software WebGL) opens a signed launch URL. What it shows: the shadow is announced, clearly marked
("SHADOW deepbet@1.0.2.ft1 — not for clinical use", its volume and Dice against the AI mask),
and hidden until asked for; H draws it as a second, green overlay (and a mark on the image) and
hides it again; the AI mask stays the drawing; Accept records one decision, on the production
result, with the production version, and nothing for the shadow result.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page
from sqlmodel import Session, select

import browser
import peers
import review_env
from radloop.api.app import create_app
from radloop.core.models import Delivery, Result, Review, ReviewDecision
from radloop.viewer_launch.signing import launch_key, sign_launch_query

pytestmark = [pytest.mark.peers, pytest.mark.slow]

SHIFT = 20  # columns between the AI ball and the shadow ball (radius 40): a crescent is shadow-only
MARK_ROWS = 60  # screenshot rows covered by the "SHADOW" mark in the viewer's corner (not counted)


class Served:
    """The review env served by uvicorn on a free port, with one AI result and its shadow."""

    def __init__(self, env: review_env.ReviewEnv, url: str, result_id: int, shadow_id: int) -> None:
        self.env, self.url, self.result_id, self.shadow_id = env, url, result_id, shadow_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Iterator[Served]:
    env = review_env.make_review_env(
        tmp_path_factory.mktemp("review-shadow-browser"), t1_series_dir, n_results=1, secret_key="b" * 40
    )
    (result_id,) = env.results
    shadow_labels = np.roll(env.results[result_id], SHIFT, axis=2)
    shadow_id = review_env.add_shadow_result(env, result_id, shadow_labels)
    port = peers.free_port()
    config = uvicorn.Config(create_app(env.settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        peers.wait_for(lambda: server.started, timeout=30, what="uvicorn to start")
        yield Served(env, f"http://127.0.0.1:{port}", result_id, shadow_id)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with browser.chromium(tmp_path / "profile") as context:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        assert errors == [], f"errors in the page: {errors}"


def _green_pixels(png: bytes, margin: int = 60) -> int:
    """Clearly green pixels of a screenshot (the shadow overlay), below the corner mark's rows."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)[MARK_ROWS:]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((g - r > margin) & (g - b > margin)))


def test_shadow_overlay_is_marked_toggled_and_never_the_decision(served: Served, page: Page) -> None:
    env = served.env
    with Session(env.engine) as s:
        seg_series = s.get(Result, served.result_id).series_instance_uid  # type: ignore[union-attr]
    query = sign_launch_query(
        launch_key(env.settings),
        reviewer="dr.shadow",
        issued_at=int(time.time()),
        study=env.study_uid,
        result=seg_series,
    )
    page.goto(f"{served.url}/review/launch?{query}")
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=90_000)

    banner = page.locator("#shadow")
    assert banner.is_visible()
    assert "SHADOW deepbet@1.0.2.ft1 — not for clinical use" in page.inner_text("#shadow-label")
    assert "Dice vs AI 0." in page.inner_text("#shadow-facts")
    assert "deepbet 1.0.2" in page.inner_text("#model")  # the result under review is production's
    canvas = page.locator("#gl")
    hidden = _green_pixels(canvas.screenshot())
    red_before = browser.red_pixels(canvas.screenshot())
    assert not page.locator("#shadow-mark").is_visible()

    page.keyboard.press("KeyH")  # show the second opinion
    page.wait_for_selector("body[data-shadow='shown']", state="attached", timeout=30_000)
    peers.wait_for(
        lambda: _green_pixels(canvas.screenshot()) > 2000, 10, interval=0.3, what="the shadow overlay drawn"
    )
    assert page.locator("#shadow-mark").is_visible()
    assert "not for clinical use" in page.inner_text("#shadow-mark")
    assert browser.red_pixels(canvas.screenshot()) > 2000  # the AI mask is still drawn on top
    shown = _green_pixels(canvas.screenshot())

    page.click("#shadow-toggle")  # and hide it again
    page.wait_for_selector("body[data-shadow='hidden']", state="attached", timeout=30_000)
    peers.wait_for(
        lambda: _green_pixels(canvas.screenshot()) < shown / 50 + 50, 10, interval=0.3, what="shadow hidden"
    )
    assert hidden < shown / 50 + 50, (hidden, shown)
    assert red_before > 2000
    assert page.evaluate("window.radloopReview.state.changed") == 0  # the drawing is still the AI mask

    page.keyboard.press("KeyH")  # shown while deciding: still not what is decided on
    page.wait_for_selector("body[data-shadow='shown']", state="attached", timeout=30_000)
    page.keyboard.press("KeyA")
    page.wait_for_selector("body[data-decision='accepted']", state="attached", timeout=30_000)
    with Session(env.engine) as s:
        reviews = list(s.exec(select(Review)).all())
        shadow_deliveries = s.exec(select(Delivery).where(Delivery.result_id == served.shadow_id)).all()
    (review,) = reviews
    assert (review.result_id, review.decision, review.reviewer) == (
        served.result_id,
        ReviewDecision.accepted,
        "dr.shadow",
    )
    assert (review.model_name, review.model_version, review.dice) == ("deepbet", "1.0.2", 1.0)
    assert review.edited_result_id is None and shadow_deliveries == []
