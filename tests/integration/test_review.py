"""PACS-launched review, end to end: a real `radloop serve` runs deepbet on the real T1 series,
and Debian's Chromium (Playwright, headless, software WebGL) opens the signed launch URL.

What it shows: the T1 with the AI mask overlaid (red pixels in a screenshot), a brush stroke and
an eraser stroke made with the mouse, Save → a review row and an edited SEG that differs from
the AI SEG in exactly the painted and erased voxels; accept and reject rows; 403 for tampered and
expired links; the time from opening the launch URL to the overlay drawn (printed).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from playwright.sync_api import BrowserContext, Page
from sqlmodel import Session, select

import browser
import peers
from radloop.core.models import AuditEvent, Delivery, Job, JobState, Result, Review, ReviewDecision
from radloop.core.refs import SeriesRef
from radloop.pipelines.ports import Volume
from radloop.pipelines.volume import load_volume
from radloop.viewer_launch.signing import sign_launch_query
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

BRAIN_AE = "RADLOOP_BRAIN"
LAUNCH_KEY = "review-launch-key-for-tests-0123456789"
REVIEWER = "dr.test"


@dataclass
class BrainResult:
    """The running server, the AI SEG result it made, and the T1 volume on its grid."""

    server: RadloopServer
    result: Result
    volume: Volume
    archive: Path


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Iterator[BrainResult]:
    """`radloop serve` with the brain pipeline; the T1 sent once, its AI SEG result awaited."""
    workdir = tmp_path_factory.mktemp("review")
    archive = workdir / "archive"
    config = {
        "secret_key": "review-tests-secret-key-0123456789abcdef",
        "dicom": {
            "listeners": [{"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60}]
        },
        "destinations": [{"kind": "folder", "name": "archive", "path": str(archive)}],
        "pipelines": {"destinations": {"brain-extraction": ["archive"]}},
        "review": {"launch_key": LAUNCH_KEY},
    }
    server = RadloopServer(workdir, config).start()
    try:
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        result = peers.wait_for(
            lambda: _ai_seg(server), 300, interval=0.5, what=f"AI SEG result (log: {server.log_path})"
        )
        paths = sorted(t1_series_dir.iterdir())
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        volume = load_volume(paths, SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID)))
        yield BrainResult(server, result, volume, archive)
    finally:
        server.stop()


def _ai_seg(server: RadloopServer) -> Result | None:
    with Session(server.engine) as s:
        job = s.exec(select(Job)).first()
        if job is None or job.state != JobState.succeeded:
            return None
        return s.exec(select(Result).where(Result.job_id == job.id, Result.kind == "SEG")).first()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with browser.chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(chromium: BrowserContext) -> Iterator[Page]:
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert errors == [], f"errors in the page: {errors}"


def _launch_url(brain: BrainResult, *extra: str) -> str:
    """A launch URL as `radloop review-url` prints it (the CLI, against the server's config)."""
    done = brain.server.cli("review-url", brain.result.study_instance_uid, "--reviewer", REVIEWER, *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _open(page: Page, url: str) -> dict[str, Any]:
    """Open a launch URL and wait until the overlay is drawn; the timings of the load."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
    wall = time.perf_counter() - start
    timings = page.evaluate("({readyAt: window.radloopReview.readyAt, marks: window.radloopReview.marks})")
    return {"wall_s": wall, "in_page_s": timings["readyAt"] / 1000, "marks": timings["marks"]}


def _report(case: str, timings: dict[str, Any]) -> None:
    """Print a launch → overlay time (the issue asks for it to be measured and reported)."""
    print(
        f"\nlaunch URL → overlay drawn ({case}): {timings['wall_s']:.2f} s wall, "
        f"{timings['in_page_s']:.2f} s in page; steps (ms since navigation): {timings['marks']}"
    )


def _reviews(brain: BrainResult) -> list[Review]:
    with Session(brain.server.engine) as s:
        return list(s.exec(select(Review).order_by(Review.id)).all())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- drawing in the page

_STROKE_JS = """([want, rowFrac, xFrom, xTo]) => {
  // Canvas points (CSS px, page coordinates) of a horizontal run of voxels on the current axial
  // slice whose AI label is `want`, starting near `rowFrac` of the slice, found with NiiVue's API.
  const nv = window.radloopReview.nv, ai = window.radloopReview.state.aiBitmap
  const [, nx, ny] = nv.back.dims
  const z = Math.round(nv.frac2vox(nv.scene.crosshairPos)[2])
  const rect = nv.canvas.getBoundingClientRect(), dpr = nv.uiData.dpr || 1
  for (let dy = 0; dy < ny / 2; dy++) {
    for (const y of [Math.round(ny * rowFrac) + dy, Math.round(ny * rowFrac) - dy]) {
      const xs = []
      for (let x = Math.round(nx * xFrom); x <= Math.round(nx * xTo); x++) xs.push(x)
      if (!xs.every((x) => ai[x + y * nx + z * nx * ny] === want)) continue
      return xs.map((x) => {
        const pos = nv.frac2canvasPos(nv.vox2frac([x, y, z]))
        return [rect.left + pos[0] / dpr, rect.top + pos[1] / dpr]
      })
    }
  }
  return null
}"""

_DIFF_JS = """() => {
  // Voxels where the drawing differs from the AI mask, as RAS millimetres (NiiVue's own mapping).
  const nv = window.radloopReview.nv, ai = window.radloopReview.state.aiBitmap, draw = nv.drawBitmap
  const [, nx, ny] = nv.back.dims
  const out = []
  for (let i = 0; i < draw.length; i++) {
    if (draw[i] === ai[i]) continue
    const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny))
    out.push([...nv.vox2mm([x, y, z], nv.back.matRAS)].slice(0, 3).concat([draw[i]]))
  }
  return out
}"""


def _stroke(page: Page, points: list[list[float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=2)
    page.mouse.up()


def _changed_voxels(page: Page, volume: Volume) -> dict[tuple[int, int, int], int]:
    """The drawing's changes as DICOM (frame, row, column) → new label, via the DICOM affine."""
    changed = {}
    to_index = np.linalg.inv(volume.affine)
    for x, y, z, value in page.evaluate(_DIFF_JS):
        index = to_index @ np.array([-x, -y, z, 1.0])  # RAS → LPS → (frame, row, column)
        rounded = np.rint(index[:3])
        assert np.allclose(index[:3], rounded, atol=1e-2), f"{index[:3]} is not a voxel centre"
        changed[(int(rounded[0]), int(rounded[1]), int(rounded[2]))] = int(value)
    return changed


def _seg_labels(path: Path, volume: Volume) -> npt.NDArray[np.uint8]:
    """A SEG's segment 1 on the volume grid, read with highdicom (independently of radloop's reader)."""
    seg = hd.seg.segread(path)
    uids = [f.sop_instance_uid for f in volume.source_frames]
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return np.asarray(pixels[..., 0] > 0, dtype=np.uint8)


# --------------------------------------------------------------------------- tests


def test_launch_overlay_paint_erase_save(brain: BrainResult, page: Page) -> None:
    cache = brain.server.settings.data_dir / "review-cache" / f"result-{brain.result.id}" / "facts.json"
    peers.wait_for(cache.exists, 60, interval=0.2, what="review data prefetched after the job")
    _report("fresh browser profile, data prefetched", _open(page, _launch_url(brain)))
    timings = _open(page, _launch_url(brain))
    _report("browser cache warm, data prefetched", timings)
    assert timings["in_page_s"] < 30

    # The T1 is shown with the mask overlaid in red; with the mask hidden (O) the red is gone.
    canvas = page.locator("#gl")
    overlay = browser.red_pixels(canvas.screenshot())
    page.keyboard.press("KeyO")
    hidden = browser.red_pixels(canvas.screenshot())
    page.keyboard.press("KeyO")
    assert overlay > 2000 and hidden < overlay / 50, (overlay, hidden)
    assert "deepbet" in page.inner_text("#model")

    page.keyboard.press("Digit1")  # axial
    zoom = "window.radloopReview.nv.scene.pan2Dxyzmm[3]"
    page.keyboard.press("Equal")
    assert page.evaluate(zoom) > 1.2
    page.keyboard.press("Digit0")
    assert page.evaluate(zoom) == 1
    slice_z = "window.radloopReview.nv.frac2vox(window.radloopReview.nv.scene.crosshairPos)[2]"
    before = page.evaluate(slice_z)
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)  # the wheel moves through the slices
    peers.wait_for(lambda: page.evaluate(slice_z) != before, 5, what="slice changed by the mouse wheel")
    page.keyboard.press("KeyB")  # brush
    paint = page.evaluate(_STROKE_JS, [0, 0.2, 0.42, 0.58])
    assert paint, "no run of background voxels found on the axial slice"
    _stroke(page, paint)
    page.keyboard.press("KeyE")  # eraser
    erase = page.evaluate(_STROKE_JS, [1, 0.5, 0.45, 0.55])
    assert erase, "no run of brain voxels found on the axial slice"
    _stroke(page, erase)
    changed = _changed_voxels(page, brain.volume)
    assert 1 in changed.values() and 0 in changed.values(), changed

    # Undo (Ctrl+Z) takes back one more stroke completely.
    page.keyboard.press("KeyB")
    _stroke(page, page.evaluate(_STROKE_JS, [0, 0.8, 0.42, 0.5]) or paint)
    assert _changed_voxels(page, brain.volume) != changed
    page.keyboard.press("Control+KeyZ")
    assert _changed_voxels(page, brain.volume) == changed

    page.keyboard.press("KeyS")  # save the edit
    page.wait_for_selector("body[data-decision='edited']", state="attached", timeout=120_000)

    (review,) = [r for r in _reviews(brain) if r.decision == ReviewDecision.edited]
    assert (review.reviewer, review.model_name, review.result_id) == (REVIEWER, "deepbet", brain.result.id)
    assert review.added_voxels == sum(1 for v in changed.values() if v == 1)
    assert review.removed_voxels == sum(1 for v in changed.values() if v == 0)
    assert review.dice is not None and 0.9 < review.dice < 1.0
    data_dir = brain.server.settings.data_dir
    with Session(brain.server.engine) as s:
        edited = s.get(Result, review.edited_result_id)
    assert edited is not None
    ai_labels = _seg_labels(data_dir / brain.result.path, brain.volume)
    edited_labels = _seg_labels(data_dir / edited.path, brain.volume)
    differing = {tuple(int(v) for v in p) for p in np.argwhere(edited_labels != ai_labels)}
    assert differing == set(changed), "the edited SEG must differ in exactly the painted and erased voxels"
    assert all(edited_labels[k] == v for k, v in changed.items())
    assert peers.dciodvfy(data_dir / edited.path) == [], peers.dciodvfy_report(data_dir / edited.path)
    seg = pydicom.dcmread(data_dir / edited.path, stop_before_pixels=True)
    assert "reviewed and edited" in seg.SeriesDescription
    assert brain.result.series_instance_uid in {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    peers.wait_for(lambda: _delivered(brain, edited), 30, what="edited SEG delivered to the archive folder")


def _delivered(brain: BrainResult, edited: Result) -> bool:
    with Session(brain.server.engine) as s:
        rows = s.exec(select(Delivery).where(Delivery.result_id == edited.id)).all()
    return bool(rows) and all(d.state == "sent" for d in rows)


def test_accept_and_reject_rows_and_cold_launch(brain: BrainResult, page: Page) -> None:
    brain.server.stop()  # a fresh process: nothing converted, not even in memory
    shutil.rmtree(brain.server.settings.data_dir / "review-cache" / f"result-{brain.result.id}")
    brain.server.start()
    _report("server restarted, data converted on launch", _open(page, _launch_url(brain)))
    page.keyboard.press("KeyA")
    page.wait_for_selector("body[data-decision='accepted']", state="attached", timeout=30_000)

    _open(page, _launch_url(brain))
    page.keyboard.press("KeyR")
    page.select_option("#reject-preset", "Image quality too poor for the model")
    page.fill("#reject-text", "motion")
    page.click("#reject-confirm")
    page.wait_for_selector("body[data-decision='rejected']", state="attached", timeout=30_000)

    accepted, rejected = _reviews(brain)[-2:]
    assert (accepted.decision, accepted.dice, accepted.added_voxels) == (ReviewDecision.accepted, 1.0, 0)
    assert (rejected.decision, rejected.dice) == (ReviewDecision.rejected, None)
    assert rejected.reason == "Image quality too poor for the model: motion"
    for row in (accepted, rejected):
        assert row.reviewer == REVIEWER and row.model_name == "deepbet" and row.model_version
        assert row.started_at <= row.ended_at
    with Session(brain.server.engine) as s:
        actions = {e.action for e in s.exec(select(AuditEvent)).all()}
    assert {"review.launch", "review.view", "review.accepted", "review.rejected", "review.edited"} <= actions


def test_tampered_and_expired_links_get_403(brain: BrainResult, page: Page) -> None:
    url = _launch_url(brain)
    tampered = url.replace(f"reviewer={REVIEWER}", "reviewer=mallory")
    response = page.goto(tampered)
    assert response is not None and response.status == 403
    assert "Invalid review link" in page.inner_text("body")
    base = url.split("?")[0]
    expired = sign_launch_query(
        LAUNCH_KEY.encode(),
        reviewer=REVIEWER,
        issued_at=int(time.time()) - 3600,
        study=brain.result.study_instance_uid,
    )
    response = page.goto(f"{base}?{expired}")
    assert response is not None and response.status == 403
    assert "expired" in page.inner_text("body")
    with Session(brain.server.engine) as s:
        denied = s.exec(select(AuditEvent).where(AuditEvent.action == "review.launch_denied")).all()
    assert sorted(json.loads(e.detail)["reason"] for e in denied) == ["bad-signature", "expired"]


def test_worklist_and_quality_page_and_api(brain: BrainResult, page: Page) -> None:
    done = brain.server.cli("review-url", "--reviewer", REVIEWER)  # no study: the worklist
    assert done.returncode == 0, done.stderr
    page.goto(done.stdout.strip())
    assert "Results awaiting review" in page.inner_text("h1")
    page.goto(brain.server.api_url + "/review/quality")
    assert page.locator("svg").count() == 2
    token = brain.server.create_token("review-tests")
    request = urllib.request.Request(
        brain.server.api_url + "/api/v1/quality", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        models = json.loads(answer.read())
    rows = _reviews(brain)
    assert rows, "the other tests of this module made decisions"
    (model,) = models
    overall = model["overall"]
    assert (model["model_name"], model["model_version"]) == (rows[0].model_name, rows[0].model_version)
    counts = {d: sum(1 for r in rows if r.decision == d) for d in ReviewDecision}
    assert (overall["reviews"], overall["accepted"], overall["edited"], overall["rejected"]) == (
        len(rows),
        counts[ReviewDecision.accepted],
        counts[ReviewDecision.edited],
        counts[ReviewDecision.rejected],
    )
    assert overall["acceptance_rate"] == pytest.approx(counts[ReviewDecision.accepted] / len(rows))
