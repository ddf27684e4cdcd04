"""Finding a patient's previous study at a pull source, for a study-level job's ``prior`` input.

The source is searched at study level by PatientID, ModalitiesInStudy and a StudyDate range from
``max_age_days`` before the current study's date up to that date (C-FIND or QIDO-RS, the
source's own retriever); the current study is left out and the newest other study is taken
first. Its instances are retrieved with the source's retrieve method (C-MOVE to our listener,
C-GET or WADO-RS) through the :class:`~radloop.connector.pull.puller.Puller`, recorded in
``pulled_study`` with trigger ``prior`` so that routing never runs pipelines on them; a study
already in the store is not retrieved again. The series is then chosen by the rule's
SeriesDescription, modality and instance count. No such study or series → None (not an error);
a source that cannot be reached raises :class:`~radloop.core.errors.PullError` (the job retries).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import select

from radloop.connector.pull.puller import Puller, dicom_date, local_today
from radloop.connector.pull.sources import StudyMatch, StudyQuery, retriever_for
from radloop.connector.study_routing import select_inputs
from radloop.core.db import session_scope
from radloop.core.models import Series, Study
from radloop.pipelines.spec import InputRule, PriorRule

log = logging.getLogger(__name__)


class PriorFinder:
    """Implements :class:`~radloop.pipelines.priors.PriorLookup` with the configured pull sources."""

    def __init__(self, engine: Engine, puller: Puller) -> None:
        self.engine = engine
        self.puller = puller

    def find_prior(self, study_instance_uid: str, rule: PriorRule) -> int | None:
        """The ``series.id`` of the prior series (retrieved into the store), or None if there is none."""
        with session_scope(self.engine) as s:
            study = s.exec(select(Study).where(Study.study_instance_uid == study_instance_uid)).first()
            patient_id, study_date = (study.patient_id, study.study_date) if study else ("", "")
        if not patient_id:
            log.info("study %s has no PatientID: no prior can be searched", study_instance_uid)
            return None
        source = self.puller.source(rule.source)
        retriever = retriever_for(source)
        query = StudyQuery(
            study_date=_date_range(study_date, rule.max_age_days),
            modality=rule.modality,
            filters=(("PatientID", patient_id),),
        )
        matches = [m for m in retriever.find(query) if m.study_instance_uid != study_instance_uid]
        for match in sorted(matches, key=lambda m: m.study_date, reverse=True):
            series_id = self._select(match, rule)
            if series_id is None:
                self.puller.retrieve_prior(source, retriever, match)
                series_id = self._select(match, rule)
            if series_id is not None:
                log.info(
                    "prior of study %s: study dated %s from %s",
                    study_instance_uid,
                    match.study_date,
                    source.name,
                )
                return series_id
        log.info(
            "no prior of study %s at %s (%d candidate studies)", study_instance_uid, source.name, len(matches)
        )
        return None

    def _select(self, match: StudyMatch, rule: PriorRule) -> int | None:
        """The stored series of the study ``match`` that the rule takes, if any."""
        selection_rule = InputRule(
            modality=[rule.modality] if rule.modality else [],
            series_description=rule.series_description,
            min_instances=rule.min_instances,
            prefer=rule.prefer,
        )
        with session_scope(self.engine) as s:
            study = s.exec(select(Study).where(Study.study_instance_uid == match.study_instance_uid)).first()
            if study is None:
                return None
            series = s.exec(select(Series).where(Series.study_id == study.id)).all()
            chosen = select_inputs({"prior": selection_rule}, series).chosen.get("prior")
            return chosen.id if chosen is not None else None


def _date_range(study_date: str, max_age_days: int) -> str:
    """``YYYYMMDD-YYYYMMDD``: from ``max_age_days`` before the study's date (today if it has none) to it."""
    try:
        day = datetime.strptime(study_date, "%Y%m%d").date()
    except ValueError:
        day = local_today()
    return f"{dicom_date(day - timedelta(days=max_age_days))}-{dicom_date(day)}"
