"""What the review routes do: launch, view, accept / reject / save an edit, worklist, quality.

Every launch (valid or not), every view and every decision writes an audit row. A session may
act on the one result its launch named, or on any result when it came from a worklist link.
Every decision is also written as an assessment SR (IHE AIRA, :mod:`radloop.feedback.assessments`)
queued for the destinations that received the AI result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from radloop.core import atna, audit
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError, RequestError
from radloop.core.models import AuditEvent, Result, ReviewDecision, Study, UsedLaunchLink
from radloop.core.settings import Settings
from radloop.feedback import decisions
from radloop.feedback.agreement import Agreement, agreement, unchanged
from radloop.feedback.assessments import store_assessment
from radloop.feedback.edits import store_edited_seg
from radloop.feedback.iocm import store_rejection_note
from radloop.feedback.quality import Period, model_quality
from radloop.feedback.shadow_quality import shadow_quality
from radloop.pipelines.ports import LabelMap
from radloop.viewer_launch.conversion import nifti_to_labels
from radloop.viewer_launch.review_cache import (
    IMAGE_FILE,
    MASK_FILE,
    ReviewCache,
    result_source,
    shadow_file,
)
from radloop.viewer_launch.signing import (
    LaunchClaims,
    LaunchDeniedError,
    ReviewSession,
    decode_session,
    launch_key,
    new_session,
    session_key,
    verify_launch,
)

logger = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Launched:
    """A review session opened by a valid launch, and the result it opens (None = worklist)."""

    session: ReviewSession
    result_id: int | None


class ReviewService:
    """The review app's actions on the database, the store and the review cache."""

    def __init__(self, settings: Settings, engine: Engine, cache: ReviewCache | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.cache = cache or ReviewCache(settings, engine)
        self._denials: dict[str, tuple[float, int]] = {}  # reason → (last audited at, denials since)
        self._denials_lock = threading.Lock()

    # ------------------------------------------------------------------ launch and session

    def launch(
        self, raw_query: str, *, now: float | None = None, signed_in: ReviewSession | None = None
    ) -> Launched:
        """Verify a launch URL's query and open a session; denials are audited and re-raised.

        ``signed_in``: the user's sign-on session when ``review.require_login`` is on; the link
        must name that user as its reviewer."""
        moment = time.time() if now is None else now
        cfg = self.settings.review
        try:
            claims = verify_launch(
                raw_query,
                launch_key(self.settings),
                now=moment,
                ttl_s=cfg.link_ttl_s,
                skew_s=cfg.clock_skew_s,
                max_lifetime_s=cfg.max_link_lifetime_s,
            )
        except LaunchDeniedError as e:
            self._audit_denial(e.reason, moment)
            raise
        if signed_in is not None and signed_in.reviewer != claims.reviewer:
            self._audit(signed_in.reviewer, "review.launch_wrong_user", "", link_reviewer=claims.reviewer)
            raise LaunchDeniedError("wrong-user", "this link is for another reviewer than the one signed in")
        if claims.nonce or cfg.one_time_links:
            self._use_once(claims)
        try:
            result_id = self._resolve(claims)
        except NotFoundError:
            self._audit(claims.reviewer, "review.launch_not_found", "", result=claims.result)
            raise
        session = new_session(claims, result_id, now=moment, ttl_s=cfg.session_ttl_s, signed_in=signed_in)
        subject = f"result:{result_id}" if result_id is not None else "worklist"
        self._audit(claims.reviewer, "review.launch", subject, session=session.session_id)
        if result_id is not None:
            self.cache.prewarm(result_id)
        return Launched(session, result_id)

    def _use_once(self, claims: LaunchClaims) -> None:
        """Record a one-time link's nonce (or signature); :class:`LaunchDeniedError` if already used."""
        digest = hashlib.sha256((claims.nonce or claims.signature).encode("ascii")).hexdigest()
        now = datetime.now(UTC)
        expires = datetime.fromtimestamp(claims.expires_at + self.settings.review.clock_skew_s, UTC)
        try:
            with session_scope(self.engine) as s:
                s.exec(delete(UsedLaunchLink).where(col(UsedLaunchLink.expires_at) < now))
                s.add(UsedLaunchLink(nonce_hash=digest, used_at=now, expires_at=expires))
        except IntegrityError:
            self._audit(claims.reviewer, "review.launch_reused", "")
            raise LaunchDeniedError(
                "used", "this one-time link was already used; open it again from the PACS"
            ) from None

    def _audit_denial(self, reason: str, moment: float) -> None:
        """Audit an anonymous denied launch: one row per reason per ``denied_audit_interval_s``,
        counting the denials in between (junk links must not flood the audit log)."""
        logger.warning("review launch denied: %s", reason)
        with self._denials_lock:
            last, suppressed = self._denials.get(reason, (float("-inf"), 0))
            if moment - last < self.settings.review.denied_audit_interval_s:
                self._denials[reason] = (last, suppressed + 1)
                return
            self._denials[reason] = (moment, 0)
        detail: dict[str, Any] = {"reason": reason}
        if suppressed:
            detail["suppressed_since_last"] = suppressed
        self._audit(ANONYMOUS, "review.launch_denied", "", **detail)

    def session(self, cookie: str | None, *, now: float | None = None) -> ReviewSession:
        """The session in a cookie value; :class:`LaunchDeniedError` if missing, forged or expired."""
        return decode_session(session_key(self.settings), cookie, now=time.time() if now is None else now)

    def _resolve(self, claims: LaunchClaims) -> int | None:
        """The result a launch opens: the named SEG, else the newest AI SEG of the study."""
        if claims.is_worklist:
            return None
        with session_scope(self.engine) as s:
            studies = _studies(s, claims)
            query = select(Result).where(
                Result.kind == decisions.REVIEWABLE_KIND, col(Result.study_instance_uid).in_(studies)
            )
            if claims.result:
                query = query.where(
                    (Result.sop_instance_uid == claims.result) | (Result.series_instance_uid == claims.result)
                )
            edited = decisions.edited_result_ids(s)
            found = [r for r in s.exec(query.order_by(col(Result.id).desc())).all() if r.id not in edited]
            if claims.result and not found:
                found = list(s.exec(query.order_by(col(Result.id).desc())).all())  # an edited SEG, named
        if not found:
            raise NotFoundError("no AI result to review for this study yet")
        return found[0].id

    # ------------------------------------------------------------------ viewing

    def view(self, session: ReviewSession, result_id: int) -> dict[str, Any]:
        """What the app shows about a result; audited as a view whose id starts the review clock."""
        self._check_allowed(session, result_id)
        facts = self.cache.facts(result_id)
        source = result_source(self.engine, self.settings, result_id)
        with session_scope(self.engine) as s:
            event = audit.record(
                s, session.reviewer, "review.view", f"result:{result_id}", {"session": session.session_id}
            )
            view_id = event.id
            viewer = atna.person(session.reviewer)
            accessed = atna.instances_accessed(s, viewer, [source.study.study_instance_uid])
            atna.record(s, self.settings.audit, accessed)
        study, series, job = source.study, source.series, source.job
        return {
            "result_id": result_id,
            "view_id": view_id,
            "reviewer": session.reviewer,
            "worklist": session.result_id is None,
            "study": {
                "study_instance_uid": study.study_instance_uid,
                "patient_name": study.patient_name,
                "patient_id": study.patient_id,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
                "study_description": study.study_description,
            },
            "series": {
                "series_instance_uid": series.series_instance_uid,
                "modality": series.modality,
                "series_description": series.series_description,
            },
            "pipeline": {"name": job.pipeline, "version": job.pipeline_version},
            "seg": {
                "sop_instance_uid": source.result.sop_instance_uid,
                "series_instance_uid": source.result.series_instance_uid,
            },
            **facts,
            "model": _model(facts, job.pipeline_version),
            "reviews": decisions.list_reviews(self.engine, result_id=result_id, limit=20),
            "urls": {
                "image": f"/review/api/results/{result_id}/{IMAGE_FILE}",
                "mask": f"/review/api/results/{result_id}/{MASK_FILE}",
            },
            "shadows": [_shadow_view(result_id, shadow) for shadow in facts.get("shadows", [])],
        }

    def data_file(self, session: ReviewSession, result_id: int, name: str) -> Path:
        """The converted image or mask file of a result the session may see."""
        self._check_allowed(session, result_id)
        if name not in (IMAGE_FILE, MASK_FILE):
            raise NotFoundError(f"no review file {name!r}")
        return self.cache.path(result_id, name)

    def shadow_data_file(self, session: ReviewSession, result_id: int, shadow_id: int) -> Path:
        """The converted mask of a shadow SEG of ``result_id`` (a second opinion) the session may see."""
        self._check_allowed(session, result_id)
        shown = {
            int(s["result_id"]) for s in self.cache.facts(result_id).get("shadows", []) if not s["error"]
        }
        if shadow_id not in shown:
            raise NotFoundError(f"result {result_id} has no readable shadow SEG {shadow_id}")
        return self.cache.path(result_id, shadow_file(shadow_id))

    def worklist(self, session: ReviewSession, limit: int = 200) -> list[dict[str, Any]]:
        """Results awaiting review (worklist sessions only); audited."""
        if session.result_id is not None:
            raise LaunchDeniedError("forbidden", "this review link opens one result, not the worklist")
        rows = decisions.pending_results(self.engine, limit)
        self._audit(
            session.reviewer,
            "review.worklist_view",
            "worklist",
            session=session.session_id,
            results=len(rows),
        )
        with session_scope(self.engine) as s:  # the worklist lists patients: audited as a query
            listed = atna.query(atna.person(session.reviewer), f"review worklist (limit {limit})")
            atna.record(s, self.settings.audit, listed)
        return rows

    def quality(self, session: ReviewSession, period: Period = "week") -> list[dict[str, Any]]:
        """Per-model quality over time (any valid session: no patient data in it)."""
        return [m.as_dict() for m in model_quality(self.engine, period=period)]

    def shadow_quality(self, session: ReviewSession, period: Period = "week") -> list[dict[str, Any]]:
        """Production vs shadow versions over time (any valid session: no patient data in it)."""
        return [q.as_dict() for q in shadow_quality(self.engine, self.settings.data_dir, period=period)]

    # ------------------------------------------------------------------ decisions

    def decide(
        self,
        session: ReviewSession,
        result_id: int,
        decision: ReviewDecision,
        reason: str,
        view_id: int | None,
    ) -> dict[str, Any]:
        """Record an accept or a reject (an edit goes through :meth:`save_edit`)."""
        if decision == ReviewDecision.edited:
            raise RequestError("an edit is saved by uploading the edited mask")
        self._check_allowed(session, result_id)
        facts = self.cache.facts(result_id)
        measured = unchanged(float(facts["ai_volume_ml"])) if decision == ReviewDecision.accepted else None
        return self._record(session, result_id, decision, reason, view_id, measured, None, facts)

    def save_edit(
        self, session: ReviewSession, result_id: int, body: bytes, reason: str, view_id: int | None
    ) -> dict[str, Any]:
        """Turn the uploaded drawing into an edited SEG and record the decision (accept if unchanged)."""
        self._check_allowed(session, result_id)
        if len(body) > self.settings.review.max_edit_bytes:
            raise RequestError("the edited mask is larger than review.max_edit_bytes")
        loaded = self.cache.loaded(result_id)
        seg = loaded.seg
        labels = nifti_to_labels(body, loaded.volume, {s.number for s in seg.segments})
        measured = agreement(seg.labels, labels, loaded.volume.voxel_volume_ml)
        facts = self.cache.facts(result_id)
        if np.array_equal(labels, seg.labels):
            return self._record(
                session, result_id, ReviewDecision.accepted, reason, view_id, measured, None, facts
            )
        labelmap = LabelMap(labels, loaded.volume, seg.segments, seg.algorithm)

        def store_edit(s: Session) -> Result:
            ai_result = s.get(Result, result_id)
            assert ai_result is not None  # checked by the cache loading it
            return store_edited_seg(
                self.settings, s, ai_result, labelmap, ai_seg=seg.dataset, reviewer=session.reviewer
            )

        return self._record(
            session, result_id, ReviewDecision.edited, reason, view_id, measured, store_edit, facts
        )

    def _record(
        self,
        session: ReviewSession,
        result_id: int,
        decision: ReviewDecision,
        reason: str,
        view_id: int | None,
        measured: Agreement | None,
        store_edit: Callable[[Session], Result] | None,
        facts: dict[str, Any],
    ) -> dict[str, Any]:
        """Record the decision; an edit's SEG (``store_edit``) is stored in the same transaction, so
        a crash leaves either both or neither (never an edited SEG queued with no decision)."""
        model = _model(facts, "")
        with session_scope(self.engine) as s:
            edited_id = store_edit(s).id if store_edit is not None else None
            started = _started_at(s, view_id, session, result_id)
            review = decisions.record_decision(
                s,
                decisions.Decision(
                    result_id=result_id,
                    reviewer=session.reviewer,
                    decision=decision,
                    started_at=started,
                    model_name=model["name"],
                    model_version=model["version"],
                    session_id=session.session_id,
                    reason=reason,
                    agreement=measured,
                    edited_result_id=edited_id,
                ),
            )
            store_assessment(self.settings, s, review)  # IHE AIRA: the decision as an SR, to the PACS
            if decision == ReviewDecision.rejected and self.settings.review.iocm_rejection_notes:
                store_rejection_note(self.settings, s, review)  # IOCM: the PACS may hide the result
            row = decisions.review_row(review)
            if edited_id is not None:
                edited = s.get(Result, edited_id)
                row["edited_seg"] = (
                    {
                        "sop_instance_uid": edited.sop_instance_uid,
                        "series_instance_uid": edited.series_instance_uid,
                    }
                    if edited
                    else None
                )
        return row

    # ------------------------------------------------------------------ helpers

    def _check_allowed(self, session: ReviewSession, result_id: int) -> None:
        if not session.allows(result_id):
            self._audit(
                session.reviewer, "review.forbidden", f"result:{result_id}", session=session.session_id
            )
            raise LaunchDeniedError("forbidden", "this review session is for another result")

    def _audit(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        with session_scope(self.engine) as s:
            audit.record(s, actor, action, subject, detail)


def _studies(s: Session, claims: LaunchClaims) -> list[str]:
    """StudyInstanceUIDs a launch names (by UID, else by AccessionNumber); both must agree if given."""
    query = select(Study)
    if claims.study:
        query = query.where(Study.study_instance_uid == claims.study)
    if claims.accession:
        query = query.where(Study.accession_number == claims.accession)
    uids = [st.study_instance_uid for st in s.exec(query).all()]
    if not uids:
        raise NotFoundError("radloop has not received this study")
    return uids


def _model(facts: dict[str, Any], fallback_version: str) -> dict[str, str]:
    """Model name and version from the SEG; the pipeline version when the SEG names none."""
    model = facts.get("model") or {}
    return {
        "name": str(model.get("name", "") or ""),
        "version": str(model.get("version", "") or fallback_version),
    }


def _shadow_view(result_id: int, shadow: dict[str, Any]) -> dict[str, Any]:
    """A shadow SEG as the app shows it: clearly marked, with where to fetch its mask."""
    if shadow["error"]:
        return {**shadow, "label": "SHADOW result (cannot be shown)", "url": None}
    model = shadow["model"]
    return {
        **shadow,
        "label": f"SHADOW {model['name']}@{model['version']} — not for clinical use",
        "url": f"/review/api/results/{result_id}/shadows/{shadow['result_id']}/mask.nii.gz",
    }


def _started_at(s: Session, view_id: int | None, session: ReviewSession, result_id: int) -> datetime:
    """When the reviewer opened the result: the view event ``view_id`` if it is theirs, else the launch."""
    if view_id is not None:
        event = s.get(AuditEvent, view_id)
        if (
            event is not None
            and event.action == "review.view"
            and event.subject == f"result:{result_id}"
            and json.loads(event.detail or "{}").get("session") == session.session_id
        ):
            return event.at
    return datetime.fromtimestamp(session.issued_at, UTC)
