"""Shadow versions as a second opinion: the /review routes and the production-vs-shadow quality numbers,
over a real store and database (the T1 series, AI SEGs and shadow SEGs on it), no browser.

The browser part (the overlay drawn, marked, toggled; accept records the production result only)
is in `integration/test_review_shadow_browser.py`.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

import review_env
from radloop.api.app import create_app
from radloop.core.db import session_scope
from radloop.core.models import Delivery, Result, Review, ReviewDecision
from radloop.feedback.agreement import dice
from radloop.feedback.decisions import pending_results
from radloop.feedback.shadow_quality import shadow_quality
from radloop.viewer_launch import pages
from radloop.viewer_launch.conversion import nifti_affine
from radloop.viewer_launch.signing import launch_key, sign_launch_query

HEADERS = {"X-Radloop-Review": "1"}


class Shadowed:
    """The review env, its AI results in order, and the shadow SEG (id, labels) of each."""

    def __init__(self, env: review_env.ReviewEnv) -> None:
        self.env = env
        self.ids = sorted(env.results)
        self.shadows: dict[int, tuple[int, npt.NDArray[np.uint8]]] = {}

    def add_shadow(self, result_id: int, shift: int) -> int:
        ai = self.env.results[result_id]
        labels = np.roll(ai, shift, axis=2)  # the same ball, moved along the columns
        shadow_id = review_env.add_shadow_result(self.env, result_id, labels)
        self.shadows[result_id] = (shadow_id, labels)
        return shadow_id


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Shadowed:
    env = review_env.make_review_env(
        tmp_path_factory.mktemp("review-shadow"), t1_series_dir, n_results=4, secret_key="h" * 40
    )
    shadowed = Shadowed(env)
    accepted, edited, broken, _late = shadowed.ids
    shadowed.add_shadow(accepted, 6)
    shadowed.add_shadow(edited, -10)
    broken_id = shadowed.add_shadow(broken, 3)
    with Session(env.engine) as s:
        path = env.settings.data_dir / s.get(Result, broken_id).path  # type: ignore[union-attr]
    path.write_bytes(b"not a DICOM file")  # a damaged shadow SEG must not block the review
    return shadowed


@pytest.fixture(scope="module")
def app(shadowed: Shadowed) -> FastAPI:
    return create_app(shadowed.env.settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def _launch(client: TestClient, env: review_env.ReviewEnv, result_id: int | None) -> None:
    claims = {"reviewer": "jdoe"}
    if result_id is not None:
        with Session(env.engine) as s:
            claims |= {"study": env.study_uid, "result": s.get(Result, result_id).series_instance_uid}  # type: ignore[union-attr]
    query = sign_launch_query(launch_key(env.settings), issued_at=int(time.time()), **claims)
    assert client.get(f"/review/launch?{query}").status_code == 303


def _mask(content: bytes) -> npt.NDArray[np.uint8]:
    """A served NIfTI label volume back as (frames, rows, columns)."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def test_view_lists_the_shadow_marked_with_its_agreement_and_serves_its_mask(
    client: TestClient, shadowed: Shadowed
) -> None:
    env, result_id = shadowed.env, shadowed.ids[0]
    shadow_id, labels = shadowed.shadows[result_id]
    _launch(client, env, result_id)
    view = client.get(f"/review/api/results/{result_id}").json()
    assert view["model"] == {"name": "deepbet", "version": "1.0.2"}  # production stays the result
    (shadow,) = view["shadows"]
    assert shadow["result_id"] == shadow_id and shadow["error"] == ""
    assert shadow["label"] == "SHADOW deepbet@1.0.2.ft1 — not for clinical use"
    assert shadow["model"] == {"name": "deepbet", "version": "1.0.2.ft1"}
    ai = env.results[result_id]
    assert shadow["dice_vs_ai"] == pytest.approx(dice(ai > 0, labels > 0), abs=1e-12)
    assert 0.5 < shadow["dice_vs_ai"] < 1.0
    assert shadow["volume_ml"] == pytest.approx(labels.sum() * env.volume.voxel_volume_ml)
    served = client.get(shadow["url"])
    assert served.status_code == 200 and served.headers["cache-control"] == "private, no-store"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(served.content))
    assert np.allclose(image.affine, nifti_affine(env.volume))
    assert np.array_equal(_mask(served.content), labels)
    assert np.array_equal(_mask(client.get(view["urls"]["mask"]).content), ai)  # the drawing stays AI's


def test_shadow_masks_are_guarded_like_their_ai_result(client: TestClient, shadowed: Shadowed) -> None:
    env = shadowed.env
    first, second = shadowed.ids[:2]
    first_shadow, second_shadow = shadowed.shadows[first][0], shadowed.shadows[second][0]
    assert client.get(f"/review/api/results/{first}/shadows/{first_shadow}/mask.nii.gz").status_code == 403
    _launch(client, env, first)
    assert client.get(f"/review/api/results/{second}/shadows/{second_shadow}/mask.nii.gz").status_code == 403
    assert client.get(f"/review/api/results/{first}/shadows/{second_shadow}/mask.nii.gz").status_code == 404
    assert client.get(f"/review/api/results/{first}/shadows/{2**63}/mask.nii.gz").status_code == 422
    _launch(client, env, None)  # a worklist session: any AI result, but a shadow is never one to review
    assert client.get(f"/review/api/results/{first_shadow}").status_code == 404
    decided = client.post(
        f"/review/api/results/{first_shadow}/decision", headers=HEADERS, json={"decision": "accepted"}
    )
    assert decided.status_code == 404
    assert first_shadow not in {row["result_id"] for row in pending_results(env.engine)}


def test_accept_records_only_the_production_result(client: TestClient, shadowed: Shadowed) -> None:
    env, result_id = shadowed.env, shadowed.ids[0]
    shadow_id = shadowed.shadows[result_id][0]
    _decide(client, shadowed, result_id, ReviewDecision.accepted)
    with Session(env.engine) as s:
        reviews = list(s.exec(select(Review)).all())
        shadow_deliveries = s.exec(select(Delivery).where(Delivery.result_id == shadow_id)).all()
    (accepted,) = [r for r in reviews if r.result_id == result_id]
    assert (accepted.decision, accepted.model_name, accepted.model_version) == (
        ReviewDecision.accepted,
        "deepbet",
        "1.0.2",
    )
    assert accepted.volume_ai_ml == pytest.approx(env.results[result_id].sum() * env.volume.voxel_volume_ml)
    assert shadow_id not in {r.result_id for r in reviews} | {r.edited_result_id for r in reviews}
    assert shadow_deliveries == []


def test_an_unreadable_shadow_is_listed_with_its_error_and_the_review_goes_on(
    client: TestClient, shadowed: Shadowed
) -> None:
    env, result_id = shadowed.env, shadowed.ids[2]
    shadow_id = shadowed.shadows[result_id][0]
    _launch(client, env, result_id)
    view = client.get(f"/review/api/results/{result_id}").json()
    (shadow,) = view["shadows"]
    assert shadow["result_id"] == shadow_id and "cannot read the shadow SEG" in shadow["error"]
    assert shadow["url"] is None and "cannot be shown" in shadow["label"]
    assert client.get(f"/review/api/results/{result_id}/shadows/{shadow_id}/mask.nii.gz").status_code == 404
    assert np.array_equal(_mask(client.get(view["urls"]["mask"]).content), env.results[result_id])


def test_a_shadow_stored_after_the_conversion_is_picked_up(client: TestClient, shadowed: Shadowed) -> None:
    env, result_id = shadowed.env, shadowed.ids[3]
    _launch(client, env, result_id)
    assert client.get(f"/review/api/results/{result_id}").json()["shadows"] == []
    shadow_id = shadowed.add_shadow(result_id, 4)  # the job's shadow results are stored after its SEG
    (shadow,) = client.get(f"/review/api/results/{result_id}").json()["shadows"]
    assert shadow["result_id"] == shadow_id and shadow["error"] == ""


def _decide(client: TestClient, shadowed: Shadowed, result_id: int, decision: ReviewDecision) -> None:
    """Accept ``result_id``, or edit it to the ball moved by 8 columns (unless already decided)."""
    env = shadowed.env
    with Session(env.engine) as s:
        if s.exec(select(Review).where(Review.result_id == result_id)).first() is not None:
            return
    _launch(client, env, result_id)
    view_id = client.get(f"/review/api/results/{result_id}").json()["view_id"]
    if decision == ReviewDecision.accepted:
        response = client.post(
            f"/review/api/results/{result_id}/decision",
            headers=HEADERS,
            json={"decision": "accepted", "view_id": view_id},
        )
    else:
        drawing = nib.Nifti1Image(_final(shadowed, result_id).transpose(2, 1, 0), nifti_affine(env.volume))
        drawing.set_data_dtype(np.uint8)
        response = client.post(
            f"/review/api/results/{result_id}/edit?view_id={view_id}",
            headers=HEADERS,
            content=gzip.compress(drawing.to_bytes()),
        )
    assert response.status_code == 200, response.text
    assert response.json()["decision"] == decision.value


def _final(shadowed: Shadowed, result_id: int) -> npt.NDArray[np.uint8]:
    """The reviewer's final mask of an edited result: the AI ball moved 8 columns back."""
    return np.roll(shadowed.env.results[result_id], -8, axis=2)


def test_quality_plots_production_vs_shadow_against_the_final_masks(
    client: TestClient, shadowed: Shadowed
) -> None:
    env = shadowed.env
    accepted, edited, broken, late = shadowed.ids
    _decide(client, shadowed, accepted, ReviewDecision.accepted)
    _decide(client, shadowed, edited, ReviewDecision.edited)
    if late not in shadowed.shadows:  # normally added by the test above
        shadowed.add_shadow(late, 4)
    with session_scope(env.engine) as s:  # the accepted series ran a week before the others
        row = s.get(Result, accepted)
        assert row is not None
        row.created_at -= timedelta(days=7)
        earlier = row.created_at

    def shadow_of(result_id: int) -> npt.NDArray[np.bool_]:
        return shadowed.shadows[result_id][1] > 0

    ai = {k: v > 0 for k, v in env.results.items()}
    final = _final(shadowed, edited) > 0
    (comparison, unreadable) = sorted(
        shadow_quality(env.engine, env.settings.data_dir, period="week"), key=lambda q: q.model_name == ""
    )
    assert (comparison.model_name, comparison.production_version, comparison.shadow_version) == (
        "deepbet",
        "1.0.2",
        "1.0.2.ft1",
    )
    assert unreadable.overall.unreadable == 1 and unreadable.overall.agreement is None  # the broken one
    overall = comparison.overall
    assert (overall.cases, overall.with_final) == (3, 2)  # accepted, edited, and `late` (no decision)
    first, second = comparison.points  # the accepted series' week, then the others'
    assert first.period_start <= earlier.date() < second.period_start
    assert (first.cases, first.with_final, first.production_dice) == (1, 1, 1.0)
    assert first.shadow_dice == pytest.approx(dice(shadow_of(accepted), ai[accepted]), abs=1e-12)
    assert first.agreement == first.shadow_dice  # accepted: the final mask is the production mask
    assert (second.cases, second.with_final) == (2, 1)
    assert second.production_dice == pytest.approx(dice(ai[edited], final), abs=1e-12)
    assert second.shadow_dice == pytest.approx(dice(shadow_of(edited), final), abs=1e-12)
    assert second.shadow_dice > second.production_dice  # the shadow ball lies nearer the edit
    assert second.agreement == pytest.approx(
        (dice(shadow_of(edited), ai[edited]) + dice(shadow_of(late), ai[late])) / 2, abs=1e-12
    )

    _launch(client, env, None)
    served = client.get("/review/api/quality/shadow?period=week").json()
    assert [q["shadow_version"] for q in served] == ["", "1.0.2.ft1"]
    assert served[1]["points"][1]["shadow_dice"] == pytest.approx(second.shadow_dice)
    page = client.get("/review/quality?period=week")
    assert page.status_code == 200
    assert page.text.count("<svg role=") == 3  # acceptance, Dice of edits, production vs shadow
    assert 'aria-label="production vs shadow"' in page.text
    for line in ("production vs final", "shadow vs final", "shadow vs production"):
        assert f'data-line="deepbet 1.0.2 vs SHADOW 1.0.2.ft1: {line}"' in page.text


def test_shadow_quality_over_the_api_with_a_token(shadowed: Shadowed) -> None:
    from radloop.core import tokens

    _, token = tokens.create(shadowed.env.engine, "shadow-quality-tests")
    with TestClient(create_app(shadowed.env.settings), base_url="http://127.0.0.1") as api:
        assert api.get("/api/v1/quality/shadow").status_code == 401
        served = api.get("/api/v1/quality/shadow?period=month", headers={"Authorization": f"Bearer {token}"})
    assert served.status_code == 200, served.text
    expected = shadow_quality(shadowed.env.engine, shadowed.env.settings.data_dir, period="month")
    assert served.json() == [q.as_dict() for q in expected]


def test_quality_page_without_shadows_has_no_shadow_plot() -> None:
    assert "production vs shadow" not in pages.quality_page([], "week", [])
