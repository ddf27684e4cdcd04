"""The /review routes over a real store and database (the T1 series, AI SEGs on it), no browser.

The browser, the real `radloop serve` and deepbet are in `integration/test_review.py`.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

import peers
import review_env
from radloop.api.app import create_app
from radloop.core.models import AuditEvent, Delivery, Result, Review, ReviewDecision
from radloop.feedback.decisions import pending_results
from radloop.viewer_launch.conversion import nifti_affine, read_seg
from radloop.viewer_launch.routes import COOKIE
from radloop.viewer_launch.signing import launch_key, sign_launch_query

HEADERS = {"X-Radloop-Review": "1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> review_env.ReviewEnv:
    return review_env.make_review_env(
        tmp_path_factory.mktemp("review"),
        t1_series_dir,
        n_results=4,
        secret_key="s" * 40,
        review={"denied_audit_interval_s": 0},  # every denial audited (aggregation: test_security)
    )


@pytest.fixture(scope="module")
def app(env: review_env.ReviewEnv) -> FastAPI:
    return create_app(env.settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def _query(env: review_env.ReviewEnv, issued: int | None = None, **claims: str) -> str:
    claims.setdefault("reviewer", "jdoe")
    return sign_launch_query(
        launch_key(env.settings), issued_at=int(time.time()) if issued is None else issued, **claims
    )


def _launch(client: TestClient, env: review_env.ReviewEnv, **claims: str) -> int:
    response = client.get(f"/review/launch?{_query(env, **claims)}")
    assert response.status_code == 303, response.text
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "samesite=lax" in response.headers["set-cookie"].lower()
    location = response.headers["location"]
    return int(location.split("result=")[1]) if "result=" in location else 0


def _ids(env: review_env.ReviewEnv) -> list[int]:
    return sorted(env.results)


def _audit(env: review_env.ReviewEnv, action: str) -> list[AuditEvent]:
    with Session(env.engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action)).all())


def test_launch_by_study_opens_newest_result_and_sets_cookie(
    client: TestClient, env: review_env.ReviewEnv
) -> None:
    result_id = _launch(client, env, study=env.study_uid)
    assert result_id == _ids(env)[-1]  # the newest; never decided on in this module
    assert client.get(f"/review/app/?result={result_id}").status_code == 200
    assert client.get("/review/api/session").json()["result_id"] == result_id
    assert _audit(env, "review.launch")


def test_launch_by_accession_and_result(client: TestClient, env: review_env.ReviewEnv) -> None:
    first = _ids(env)[0]
    with Session(env.engine) as s:
        seg_series = s.get(Result, first).series_instance_uid  # type: ignore[union-attr]
    assert _launch(client, env, accession=review_env.ACCESSION, result=seg_series) == first


@pytest.mark.parametrize("case", ["tampered", "expired", "wrong-key"])
def test_bad_links_get_403_and_are_audited(client: TestClient, env: review_env.ReviewEnv, case: str) -> None:
    before = len(_audit(env, "review.launch_denied"))
    if case == "tampered":
        query = _query(env, study=env.study_uid).replace("reviewer=jdoe", "reviewer=mallory")
    elif case == "expired":
        query = _query(env, issued=int(time.time()) - 3600, study=env.study_uid)
    else:
        query = sign_launch_query(b"w" * 40, reviewer="jdoe", issued_at=int(time.time()), study=env.study_uid)
    response = client.get(f"/review/launch?{query}")
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert ("expired" in response.text) == (case == "expired")
    denied = _audit(env, "review.launch_denied")
    assert len(denied) == before + 1
    assert json.loads(denied[-1].detail)["reason"] == ("expired" if case == "expired" else "bad-signature")


def test_unknown_study_is_404(client: TestClient, env: review_env.ReviewEnv) -> None:
    assert client.get(f"/review/launch?{_query(env, study='1.2.3.999')}").status_code == 404


def test_no_session_no_data(client: TestClient, env: review_env.ReviewEnv) -> None:
    result_id = _ids(env)[0]
    assert client.get("/review/app/").status_code == 403
    assert client.get(f"/review/api/results/{result_id}").status_code == 403
    client.cookies.set(COOKIE, "forged.cookie", domain="127.0.0.1", path="/review")
    assert client.get(f"/review/api/results/{result_id}/image.nii").status_code == 403


def test_session_is_scoped_to_its_result(client: TestClient, env: review_env.ReviewEnv) -> None:
    first, second = _ids(env)[:2]
    _launch(client, env, study=env.study_uid, result=_seg_series(env, first))
    assert client.get(f"/review/api/results/{second}").status_code == 403
    assert client.get("/review/api/worklist").status_code == 403
    assert client.get("/review/worklist").status_code == 403


def _seg_series(env: review_env.ReviewEnv, result_id: int) -> str:
    with Session(env.engine) as s:
        return s.get(Result, result_id).series_instance_uid  # type: ignore[union-attr]


def test_view_and_data_on_one_grid(client: TestClient, env: review_env.ReviewEnv) -> None:
    result_id = _ids(env)[0]
    _launch(client, env, study=env.study_uid, result=_seg_series(env, result_id))
    view = client.get(f"/review/api/results/{result_id}").json()
    assert view["model"] == {"name": "deepbet", "version": "1.0.2"}
    assert view["study"]["accession_number"] == review_env.ACCESSION
    labels = env.results[result_id]
    assert view["ai_volume_ml"] == pytest.approx(labels.sum() * env.volume.voxel_volume_ml)
    assert _audit(env, "review.view")[-1].id == view["view_id"]
    image = nib.Nifti1Image.from_bytes(client.get(view["urls"]["image"]).content)
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(view["urls"]["mask"]).content))
    assert image.shape == mask.shape == (256, 256, 170)
    assert np.allclose(image.affine, nifti_affine(env.volume)) and np.allclose(mask.affine, image.affine)
    assert np.allclose(np.asarray(image.dataobj).transpose(2, 1, 0), env.volume.array, atol=1e-3)
    assert np.array_equal(np.asarray(mask.dataobj).transpose(2, 1, 0), labels)
    # NIfTI voxel (i, j, k) = DICOM (column, row, frame): both affines put it at the same place.
    lps = env.volume.affine @ [100, 20, 30, 1]
    ras = image.affine @ [30, 20, 100, 1]
    assert np.allclose(ras[:3], lps[:3] * [-1, -1, 1])


def test_accept_and_reject_rows(client: TestClient, env: review_env.ReviewEnv) -> None:
    accept_id, reject_id = _ids(env)[1], _ids(env)[2]  # [0] is edited, [3] stays pending
    _launch(client, env, study=env.study_uid, result=_seg_series(env, accept_id))
    view_id = client.get(f"/review/api/results/{accept_id}").json()["view_id"]
    assert (
        client.post(f"/review/api/results/{accept_id}/decision", json={"decision": "accepted"}).status_code
        == 403
    )
    row = client.post(
        f"/review/api/results/{accept_id}/decision",
        headers=HEADERS,
        json={"decision": "accepted", "view_id": view_id},
    ).json()
    assert (row["decision"], row["dice"], row["reviewer"], row["model_version"]) == (
        "accepted",
        1.0,
        "jdoe",
        "1.0.2",
    )
    _launch(client, env, study=env.study_uid, result=_seg_series(env, reject_id))
    no_reason = client.post(
        f"/review/api/results/{reject_id}/decision", headers=HEADERS, json={"decision": "rejected"}
    )
    assert no_reason.status_code == 400
    row = client.post(
        f"/review/api/results/{reject_id}/decision",
        headers=HEADERS,
        json={"decision": "rejected", "reason": "wrong structure"},
    ).json()
    assert (row["decision"], row["reason"], row["dice"]) == ("rejected", "wrong structure", None)
    with Session(env.engine) as s:
        reviews = {r.result_id: r for r in s.exec(select(Review)).all()}
    assert reviews[accept_id].decision == ReviewDecision.accepted
    assert reviews[accept_id].started_at <= reviews[accept_id].ended_at
    assert reviews[reject_id].pipeline == "brain-extraction"
    assert [e.subject for e in _audit(env, "review.rejected")] == [f"result:{reject_id}"]


def test_edit_becomes_a_seg_that_differs_exactly(client: TestClient, env: review_env.ReviewEnv) -> None:
    result_id = _ids(env)[0]
    _launch(client, env, study=env.study_uid, result=_seg_series(env, result_id))
    view = client.get(f"/review/api/results/{result_id}").json()
    ai = env.results[result_id]
    final = ai.copy()
    final[85, 10:14, 10:15] = 1  # painted outside the ball
    final[85, 128, 128:133] = 0  # erased inside
    expected = {tuple(int(v) for v in p) for p in np.argwhere(final != ai)}
    drawing = nib.Nifti1Image(final.transpose(2, 1, 0), nifti_affine(env.volume))
    drawing.set_data_dtype(np.uint8)
    response = client.post(
        f"/review/api/results/{result_id}/edit?view_id={view['view_id']}",
        headers=HEADERS,
        content=gzip.compress(drawing.to_bytes()),
    )
    assert response.status_code == 200, response.text
    row = response.json()
    assert (row["decision"], row["added_voxels"], row["removed_voxels"]) == ("edited", 20, 5)
    assert 0.99 < row["dice"] < 1.0
    with Session(env.engine) as s:
        edited = s.get(Result, row["edited_result_id"])
        ai_result = s.get(Result, result_id)
        deliveries = s.exec(select(Delivery).where(Delivery.result_id == row["edited_result_id"])).all()
    assert edited is not None and ai_result is not None
    assert [d.destination for d in deliveries] == ["pacs"]
    seg = hd.seg.segread(env.settings.data_dir / edited.path)
    assert seg.SeriesDescription == "AI brain mask (deepbet) - reviewed and edited"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert str(seg.ContentCreatorName) == "jdoe^"
    assert ai_result.series_instance_uid in {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    labels = read_seg(env.settings.data_dir / edited.path, env.volume).labels
    assert {tuple(int(v) for v in p) for p in np.argwhere(labels != ai)} == expected
    pending = client.get("/review/api/worklist")
    assert pending.status_code == 403  # a result session is not a worklist session


def test_edit_on_another_grid_is_refused(client: TestClient, env: review_env.ReviewEnv) -> None:
    result_id = _ids(env)[0]
    _launch(client, env, study=env.study_uid, result=_seg_series(env, result_id))
    shifted = nifti_affine(env.volume).copy()
    shifted[0, 3] += 1.0
    drawing = nib.Nifti1Image(env.results[result_id].transpose(2, 1, 0), shifted)
    response = client.post(
        f"/review/api/results/{result_id}/edit", headers=HEADERS, content=drawing.to_bytes()
    )
    assert response.status_code == 400
    assert "grid" in response.json()["detail"]


def test_worklist_and_quality(client: TestClient, env: review_env.ReviewEnv) -> None:
    assert _launch(client, env) == 0  # no study: a worklist link
    pending = client.get("/review/api/worklist").json()
    decided = {r.result_id for r in _reviews(env)}
    assert {row["result_id"] for row in pending} == set(env.results) - decided
    assert pending, "one result is left undecided by the other tests"
    page = client.get("/review/worklist")
    assert page.status_code == 200 and "Review^Test" in page.text
    quality = client.get("/review/api/quality").json()
    assert quality and quality[0]["model_name"] == "deepbet"
    page = client.get("/review/quality?period=day")
    assert page.status_code == 200 and "<svg" in page.text


def _reviews(env: review_env.ReviewEnv) -> list[Review]:
    with Session(env.engine) as s:
        return list(s.exec(select(Review)).all())


def test_static_assets_are_served_and_confined(client: TestClient) -> None:
    index = client.get("/review/static/index.html")
    assert index.status_code == 200
    script = index.text.split('src="')[1].split('"')[0]
    assert client.get(script).status_code == 200
    assert client.get("/review/static/../routes.py").status_code == 404
    assert client.get("/review/static/%2e%2e/routes.py").status_code == 404


def test_mounted_in_the_api_app_with_token_endpoints(env: review_env.ReviewEnv) -> None:
    from radloop.core import tokens

    _, token = tokens.create(env.engine, "review-unit-tests", ["operator"])
    with TestClient(create_app(env.settings), base_url="http://127.0.0.1", follow_redirects=False) as api:
        assert api.get(f"/review/launch?{_query(env, study=env.study_uid)}x").status_code == 403
        assert api.get("/api/v1/quality").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert api.get("/api/v1/quality", headers=auth).json()[0]["model_name"] == "deepbet"
        assert api.get("/api/v1/reviews", headers=auth).status_code == 200
        assert {r["result_id"] for r in api.get("/api/v1/reviews/pending", headers=auth).json()} <= set(
            env.results
        )
        minted = api.post(
            "/api/v1/review-urls", headers=auth, json={"reviewer": "jdoe", "study": env.study_uid}
        )
        assert minted.status_code == 200, minted.text
        url = minted.json()["url"]
        assert api.get(url.split("127.0.0.1:8080", 1)[1]).status_code == 303


def test_prefetch_converts_pending_results_and_notices_a_rewritten_seg(env: review_env.ReviewEnv) -> None:
    from radloop.viewer_launch.prefetch import ReviewPrefetcher

    prefetcher = ReviewPrefetcher(env.settings, env.engine)
    prefetcher.tick()
    pending = {row["result_id"] for row in pending_results(env.engine)}
    assert pending and all(prefetcher.cache.is_ready(r) for r in pending)
    newest = max(pending)
    with Session(env.engine) as s:
        seg_path = env.settings.data_dir / s.get(Result, newest).path  # type: ignore[union-attr]
    stat = seg_path.stat()
    os.utime(seg_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a retried job rewrote it
    assert not prefetcher.cache.is_ready(newest)
    assert prefetcher.tick() == 1 and prefetcher.cache.is_ready(newest)
    small = env.settings.model_copy(
        update={"review": env.settings.review.model_copy(update={"cache_max_results": 1})}
    )
    ReviewPrefetcher(small, env.engine).trim()
    assert len(list(prefetcher.cache.root.iterdir())) == 1


# ---------------------------------------------- hostile input (issue 12): problems, not 500s

PROBLEM = "application/problem+json"
HUGE_IDS = [2**63, 2**64, 10**30]


def _is_problem(response: httpx.Response, status: int) -> bool:
    body = response.json() if response.headers["content-type"].startswith(PROBLEM) else {}
    return response.status_code == status and body.get("status") == status and bool(body.get("detail"))


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_result_ids_past_the_database_range_are_422_problems(
    client: TestClient, env: review_env.ReviewEnv, huge: int
) -> None:
    assert _launch(client, env) == 0  # a worklist session may ask for any result id
    for response in (
        client.get(f"/review/api/results/{huge}"),
        client.get(f"/review/api/results/{huge}/image.nii"),
        client.get(f"/review/api/results/{huge}/mask.nii.gz"),
        client.post(f"/review/api/results/{huge}/decision", headers=HEADERS, json={"decision": "accepted"}),
        client.post(f"/review/api/results/{huge}/edit", headers=HEADERS, content=b"x"),
    ):
        assert _is_problem(response, 422), (response.request.url, response.status_code, response.text)
    known = _ids(env)[-1]  # pending; the view id below is refused before anything is recorded
    too_late = (
        client.post(f"/review/api/results/{known}/edit?view_id={huge}", headers=HEADERS, content=b"x"),
        client.post(
            f"/review/api/results/{known}/decision",
            headers=HEADERS,
            json={"decision": "rejected", "reason": "r", "view_id": huge},
        ),
    )
    assert all(_is_problem(r, 422) for r in too_late), [r.text for r in too_late]


def test_largest_result_id_is_a_404_problem(client: TestClient, env: review_env.ReviewEnv) -> None:
    assert _launch(client, env) == 0
    assert _is_problem(client.get(f"/review/api/results/{2**63 - 1}"), 404)


def test_api_review_ids_past_the_database_range_are_422_problems(env: review_env.ReviewEnv) -> None:
    from radloop.core import tokens

    _, token = tokens.create(env.engine, "review-huge-ids")
    with TestClient(create_app(env.settings), base_url="http://127.0.0.1") as api:
        auth = {"Authorization": f"Bearer {token}"}
        assert _is_problem(api.get(f"/api/v1/reviews?result_id={2**63}", headers=auth), 422)
        assert api.get(f"/api/v1/reviews?result_id={2**63 - 1}", headers=auth).json() == []


NON_ASCII_COOKIES = ["\u00e9", "abc.\u00e9", "\u00e9." + "A" * 43, "eyJ9.\u2603\u2603", "\U0001f600"]
JSON_ROUTES = [
    ("GET", "/review/api/session"),
    ("GET", "/review/api/results/1"),
    ("GET", "/review/api/results/1/image.nii"),
    ("GET", "/review/api/results/1/mask.nii.gz"),
    ("POST", "/review/api/results/1/decision"),
    ("POST", "/review/api/results/1/edit"),
    ("GET", "/review/api/worklist"),
    ("GET", "/review/api/quality"),
]
PAGE_ROUTES = ["/review/app/", "/review/worklist", "/review/quality"]


@pytest.mark.parametrize("cookie", NON_ASCII_COOKIES)
def test_non_ascii_session_cookies_are_403_on_every_review_route(
    client: TestClient, env: review_env.ReviewEnv, cookie: str
) -> None:
    header = {"Cookie": f"{COOKIE}={cookie}".encode()}  # raw UTF-8: the server sees non-ASCII text
    for method, path in JSON_ROUTES:
        response = client.request(method, path, headers={**HEADERS, **header}, json={"decision": "accepted"})
        assert _is_problem(response, 403), (path, response.status_code, response.text)
    for path in PAGE_ROUTES:
        page = client.get(path, headers=header)
        assert page.status_code == 403 and "Review session needed" in page.text, (path, page.text)
    assert client.get("/review/static/index.html", headers=header).status_code == 200  # needs no session
    assert client.get(f"/review/launch?{_query(env)}", headers=header).status_code == 303  # nor does a launch


def _exchange(sock: socket.socket, target: bytes, cookie: bytes = b"") -> tuple[int, str, bytes]:
    """One raw HTTP/1.1 GET on an open connection: status, Connection header, body."""
    headers = b"Host: 127.0.0.1\r\n" + (b"Cookie: " + cookie + b"\r\n" if cookie else b"")
    sock.sendall(b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n")
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.getheader("connection", ""), response.read()


def test_refused_review_requests_keep_the_connection_open(env: review_env.ReviewEnv) -> None:
    """Over a real server, raw bytes on one socket: every refusal is a response, none drops the connection."""
    port = peers.free_port()
    config = uvicorn.Config(create_app(env.settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        peers.wait_for(lambda: server.started, timeout=30, what="uvicorn to start")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            status, _, _ = _exchange(sock, f"/review/launch?{_query(env)}".encode())
            assert status == 303
            raw_cookie = b"radloop_review=\xc3\xa9"
            refusals = [
                (b"/review/api/session", raw_cookie, 403),
                (b"/review/worklist", raw_cookie, 403),
                (b"/review/api/results/1/mask.nii.gz", b"radloop_review=abc.\xe2\x98\x83", 403),
                (f"/review/api/results/{2**63}".encode(), b"", 403),  # no session: refused first
            ]
            for target, cookie, expected in refusals:
                status, connection, body = _exchange(sock, target, cookie)
                assert (status, connection.lower()) == (expected, ""), (target, status, connection, body)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
