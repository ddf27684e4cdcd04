"""The operator console in Chromium (Playwright) against a real `radloop serve` and a real Orthanc.

One server for the module, the PACS (Orthanc) stopped at first, outbox retries far apart (so
only the console's "retry" sends again within the test):

1. An operator signs in with an API token; the real T1 is sent to `RADLOOP_BRAIN`: the overview's
   counters move without a reload, the job appears running then succeeded on the jobs page, its
   timeline shows each operator with the durations of `radloop jobs show --json`, and the SEG
   result links to the review app (which opens).
2. The SEG could not be delivered: the overview shows the destination down and the pending
   delivery; Orthanc started, "retry" on the deliveries page delivers it (the SEG is in Orthanc).
3. A CT sent to the brain AE runs a pipeline whose model is missing: the job page shows the
   reason; "retry" re-runs it (a second attempt on the timeline).

With `RADLOOP_UPDATE_SCREENSHOTS=1` the screenshots of the overview and the job page are written
to `docs/` (the README shows them); otherwise to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from sqlmodel import Session, select

import browser
import peers
from radloop.core.models import Job
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

BRAIN_AE = "RADLOOP_BRAIN"
REPO = Path(__file__).resolve().parents[2]
FAILING = """\
# A CT pipeline on the brain AE whose model nobody added: its jobs fail at once, saying so.
name: ct-at-brain-ae
version: 1.0.0
match:
  modality: [CT]
  min_instances: 10
operators:
  - {id: volume, use: dicom.series_to_volume, inputs: {series: input.series}}
  - {id: organs, use: infer.segment, with: {model: ct_nobody_added}, inputs: {volume: volume.volume}}
  - {id: seg, use: writer.seg, inputs: {labelmap: organs.labelmap}}
"""


@dataclass
class Console:
    server: RadloopServer
    orthanc: peers.OrthancServer
    token: str
    shots: Path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, orthanc: peers.OrthancServer) -> Iterator[Console]:
    workdir = tmp_path_factory.mktemp("console-browser")
    pipelines = workdir / "pipelines"
    pipelines.mkdir()
    (pipelines / "ct-at-brain-ae.yaml").write_text(FAILING)
    config = {
        "dicom": {
            "listeners": [
                {
                    "ae_title": BRAIN_AE,
                    "pipelines": ["brain-extraction", "ct-at-brain-ae"],
                    "quiet_period_s": 60,
                }
            ]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"dirs": [str(pipelines)], "destinations": {"brain-extraction": ["pacs"]}},
        # the first failed send is retried after 10 minutes: within the test only "retry" sends
        "outbox": {"retry_base_s": 600.0, "retry_cap_s": 600.0},
    }
    orthanc.clear()
    orthanc.stop()
    server = RadloopServer(workdir, config).start(timeout=180)  # loaded CI machines start slowly
    try:
        shots = REPO / "docs" if os.environ.get("RADLOOP_UPDATE_SCREENSHOTS") == "1" else workdir
        yield Console(server, orthanc, server.create_token("console-operator", role="operator"), shots)
    finally:
        server.stop()
        if orthanc._proc is None:  # stopped by this module: the session's other tests need it back
            orthanc.start()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with browser.chromium(tmp_path_factory.mktemp("chromium-profile"), width=1400, height=1000) as context:
        yield context


@pytest.fixture(scope="module")
def page(chromium: BrowserContext, console: Console) -> Iterator[Page]:
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{console.server.api_url}/console/")
    assert "/console/login" in page.url  # no session yet: the sign-in page
    page.fill("input[name=token]", console.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.server.api_url}/console/")
    yield page
    page.close()
    assert errors == [], f"errors in the console: {errors}"


def _counter(page: Page, key: str) -> int:
    return int(page.inner_text(f"[data-counter='{key}'] b"))


def _jobs(console: Console) -> list[Job]:
    with Session(console.server.engine) as s:
        return list(s.exec(select(Job).order_by(Job.id)).all())  # type: ignore[arg-type]


def test_t1_moves_the_counters_and_its_job_shows_a_timeline_like_jobs_show(
    console: Console, page: Page, t1_series_dir: Path
) -> None:
    base = console.server.api_url
    assert _counter(page, "instances_received") == 0
    sent = peers.storescu(t1_series_dir, "127.0.0.1", console.server.port, BRAIN_AE)
    assert sent.returncode == 0, sent.stderr
    # the overview updates itself (polling with ETags): no reload
    counter = page.locator("[data-counter='instances_received'] b")
    expect(counter).to_have_text("170", timeout=60_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    page.goto(f"{base}/console/jobs")
    page.wait_for_selector("tr[data-state='running']", timeout=120_000)
    page.wait_for_selector("tr[data-state='succeeded']", timeout=300_000)
    job = _jobs(console)[0]
    assert job.pipeline == "brain-extraction"

    page.goto(f"{base}/console/jobs/{job.id}")
    shown = console.server.cli("jobs", "show", str(job.id), "--json")
    assert shown.returncode == 0, shown.stderr
    steps = json.loads(shown.stdout)["steps"]
    assert [s["operator_id"] for s in steps] == ["volume", "brain", "seg"]
    for step in steps:
        row = page.locator(f".timeline[data-attempt='1'] .step[data-operator='{step['operator_id']}']")
        assert float(row.get_attribute("data-duration-s") or "nan") == step["duration_s"]
        assert row.locator(".duration").inner_text() == f"{step['duration_s']:.2f} s"
        assert row.locator(".bar").bounding_box()["width"] > 0  # type: ignore[index]
    page.screenshot(path=str(console.shots / "console-job.png"), full_page=True)

    link = page.locator("tr[data-kind='SEG'] a.review")
    result_id = int(page.get_attribute("tr[data-kind='SEG']", "data-result") or "0")
    assert link.get_attribute("data-review-app") == f"/review/app/?result={result_id}"
    with page.expect_navigation() as opened:
        link.click()
    assert opened.value is not None and opened.value.status == 200
    assert page.url == f"{base}/review/app/?result={result_id}"
    page.goto(f"{base}/console/")


def test_pacs_down_shows_on_the_overview_and_retry_delivers(console: Console, page: Page) -> None:
    base = console.server.api_url
    page.goto(f"{base}/console/")
    page.wait_for_selector("[data-kind='destination-down']", timeout=60_000)
    assert "destination pacs is down" in page.inner_text("[data-kind='destination-down']")
    assert _counter(page, "deliveries_pending") >= 1
    assert page.get_attribute("tr[data-destination='pacs']", "data-down") == "1"
    page.screenshot(path=str(console.shots / "console-overview.png"), full_page=True)

    page.goto(f"{base}/console/deliveries?destination=pacs")
    pending = page.locator("tr[data-state='pending']")
    assert pending.count() >= 1
    assert "pacs" in pending.first.inner_text()
    console.orthanc.start()
    for _ in range(pending.count()):
        page.locator("tr[data-state='pending'] button", has_text="retry").first.click()
        page.wait_for_timeout(500)
    expect(page.locator("tr[data-state='pending']")).to_have_count(0, timeout=60_000)
    assert page.locator("tr[data-state='sent']").count() >= 1
    segs = [
        i for i in console.orthanc.instances() if console.orthanc.instance_tags(i).get("Modality") == "SEG"
    ]
    assert len(segs) == 1
    page.goto(f"{base}/console/")
    expect(page.locator("[data-kind='destination-down']")).to_have_count(0, timeout=30_000)


def test_a_failed_job_shows_its_reason_and_retry_reruns_it(
    console: Console, page: Page, ct_j2k_series_dir: Path
) -> None:
    base = console.server.api_url
    sent = peers.storescu(ct_j2k_series_dir, "127.0.0.1", console.server.port, BRAIN_AE)
    assert sent.returncode == 0, sent.stderr
    page.goto(f"{base}/console/jobs?pipeline=ct-at-brain-ae")
    page.wait_for_selector("tr[data-state='failed']", timeout=120_000)
    job = next(j for j in _jobs(console) if j.pipeline == "ct-at-brain-ae")
    page.goto(f"{base}/console/jobs/{job.id}")
    reason = page.inner_text("pre.reason")
    assert "ct_nobody_added" in reason and "model store" in reason, reason
    assert page.locator(".timeline[data-attempt='1']").count() == 1
    page.goto(f"{base}/console/")
    assert "failed job" in page.inner_text("[data-kind='failed-jobs']")
    page.goto(f"{base}/console/jobs/{job.id}")
    page.click("button[data-action$='/retry']")
    page.wait_for_selector(".timeline[data-attempt='2']", timeout=120_000)
    page.wait_for_selector("p[data-state='failed']", timeout=120_000)
    assert re.search(r"ct_nobody_added", page.inner_text("pre.reason"))
    again = next(j for j in _jobs(console) if j.id == job.id)
    assert again.attempts == 2 and again.state.value == "failed"
