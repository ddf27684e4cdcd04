"""QIDO-RS (PS3.18 §10.6) over radloop's own index: search studies, series and instances.

What is searched: every received instance (``instance`` table) and every result radloop wrote
(``result`` table: SEG, SR, ... in the source study), so a viewer sees a study together with its
AI results. Matching follows PS3.4 C.2.2.2 for the keys in :data:`STUDY_KEYS`, :data:`SERIES_KEYS`
and :data:`INSTANCE_KEYS`: single value, UID list (``a,b``), wildcard (``*``, ``?``) and date range
(``20240101-``). Other keys are ignored and named in a ``Warning`` (PS3.18 allows this). Answers
are DICOM JSON (PS3.18 Annex F) built with pydicom; attributes the index does not hold
(``includefield``) are read from the header of one instance of the study or series.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from sqlalchemy import Select, String, and_, cast, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from radloop.connector.dicomweb.reading import small_header
from radloop.core.errors import InvalidInstanceError, NotFoundError, RequestError
from radloop.core.models import Instance, Result, Series, Study

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
MAX_DIGITS = 9  # limit and offset: 999,999,999 is far beyond any index
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
)
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber")
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
_COUNT_KEYS = (
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True)
class IndexedInstance:
    """One retrievable instance: a received one or a result, with its file."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    path: Path


@dataclass
class SeriesEntry:
    """One series as the index knows it, with its instances."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    series_number: int | None
    instances: list[IndexedInstance] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesHit:
    """One series of a QIDO-RS answer: its entry, its matching row and the file to read extras from."""

    entry: SeriesEntry
    row: dict[str, str]
    first_path: Path


@dataclass
class StudySummary:
    """Counts and modalities of one study, for study-level answers."""

    series: int = 0
    instances: int = 0
    modalities: set[str] = field(default_factory=set)

    def add(self, modality: str, instances: int, new_series: bool = True) -> None:
        self.series += 1 if new_series else 0
        self.instances += instances
        if modality:
            self.modalities.add(modality)


@dataclass(frozen=True)
class QidoQuery:
    """Parsed QIDO-RS query parameters: matching keys, includefield, limit and offset."""

    match: dict[str, str]
    includefield: tuple[str, ...] = ()
    include_all: bool = False
    limit: int = 100
    offset: int = 0

    @classmethod
    def parse(cls, params: Iterable[tuple[str, str]]) -> QidoQuery:
        """From query parameters (repeated keys allowed); tags may be given as keywords or 8 hex digits."""
        match: dict[str, str] = {}
        include: list[str] = []
        include_all, limit, offset = False, 100, 0
        for key, value in params:
            if key == "includefield":
                for item in value.split(","):
                    if item.strip() == "all":
                        include_all = True
                    elif item.strip():
                        include.append(_keyword(item.strip()))
            elif key == "limit":
                limit = min(_non_negative(key, value), MAX_LIMIT)
            elif key == "offset":
                offset = _non_negative(key, value)
            elif key == "fuzzymatching":
                continue
            else:
                kw = _keyword(key)
                match[kw] = f"{match[kw]},{value}" if kw in match else value
        return cls(match, tuple(include), include_all, limit, offset)


def _non_negative(key: str, value: str) -> int:
    """A non-negative integer of at most :data:`MAX_DIGITS` ASCII digits (not ``²``, not 5,000 digits)."""
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS):
        raise RequestError(f"{key}={value[:40]!r} is not a whole number ({MAX_DIGITS} digits at most)")
    return int(value)


def _keyword(key: str) -> str:
    """A DICOM keyword for ``key`` (a keyword, or a tag as 8 hex digits); :class:`RequestError` if neither."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        kw = keyword_for_tag(int(key, 16))
        if kw and tag_for_keyword(kw) is not None:  # repeater tags' keywords do not map back (fuzzing)
            return str(kw)
    elif tag_for_keyword(key) is not None:
        return key
    raise RequestError(f"{key!r} is neither a DICOM keyword nor a tag")


# --------------------------------------------------------------------------- matching


def matches(value: str, pattern: str, keyword: str) -> bool:
    """PS3.4 C.2.2.2 matching of one attribute value against one query value."""
    if pattern in ("", "*"):
        return True
    vr = dictionary_VR(keyword)
    if vr == "UI":
        return value in {p.strip() for p in pattern.replace("\\", ",").split(",")}
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        low, _, high = pattern.partition("-")
        return bool(value) and (not low or value >= low) and (not high or value <= high[: len(value)] + "~")
    values = [v.strip() for v in value.split("\\")] if "\\" in value else [value]
    if "*" in pattern or "?" in pattern:
        regex = wildcard_regex(pattern.upper() if vr == "PN" else pattern)
        return any(regex.fullmatch(v.upper() if vr == "PN" else v) for v in values)
    if vr == "PN":
        return any(v.upper() == pattern.upper() for v in values)
    return any(v == pattern for v in values) or any(v == p for v in values for p in pattern.split(","))


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4 wildcard matching: only ``*`` (any run) and ``?`` (one character) are special;
    everything else, ``[`` and ``]`` included, matches itself (fnmatch's classes do not apply)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def like_pattern(pattern: str) -> str:
    """The SQL ``LIKE`` pattern (escape character ``\\``) of a DICOM wildcard pattern."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _filter(rows: list[dict[str, str]], query: QidoQuery, keys: tuple[str, ...]) -> list[dict[str, str]]:
    active = {k: v for k, v in query.match.items() if k in keys}
    return [r for r in rows if all(matches(r.get(k, ""), v, k) for k, v in active.items())]


def sql_match(column: ColumnElement[Any], pattern: str, keyword: str) -> ColumnElement[bool] | None:
    """:func:`matches` as a SQL condition on ``column`` (``None``: matches everything)."""
    if pattern in ("", "*"):
        return None
    vr = dictionary_VR(keyword)
    text: ColumnElement[str] = func.coalesce(cast(column, String), "")
    if vr == "UI":
        return text.in_([p.strip() for p in pattern.replace("\\", ",").split(",")])
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        low, _, high = pattern.partition("-")
        conditions = [text != ""]
        if low:
            conditions.append(text >= low)
        if high:
            conditions.append(text <= high + "~")
        return and_(*conditions)
    if vr == "PN":
        text = func.upper(text)
        pattern = pattern.upper()
    if "*" in pattern or "?" in pattern:
        return text.like(like_pattern(pattern), escape="\\")
    if vr == "PN":
        return text == pattern
    return text.in_([pattern, *pattern.split(",")])


def ignored_keys(query: QidoQuery, keys: tuple[str, ...]) -> list[str]:
    """Matching keys of ``query`` that this level cannot match on (they are ignored)."""
    return [k for k in query.match if k not in keys]


# --------------------------------------------------------------------------- the index


_COLUMNS: dict[str, Any] = {
    "StudyInstanceUID": Study.study_instance_uid,
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "AccessionNumber": Study.accession_number,
    "StudyDate": Study.study_date,
    "StudyDescription": Study.study_description,
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesDescription": Series.series_description,
    "SeriesNumber": Series.series_number,
}


class ReadIndex:
    """Studies, series and instances (received and results) as DICOMweb sees them."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.data_dir = data_dir

    def studies(self, study_uids: list[str] | None = None) -> list[Study]:
        """Study rows, newest first (all, or those with these UIDs)."""
        with Session(self.engine) as s:
            q = select(Study).order_by(col(Study.id).desc())
            if study_uids is not None:
                q = q.where(col(Study.study_instance_uid).in_(study_uids))
            return list(s.exec(q).all())

    def study_summaries(self, study_uids: list[str] | None) -> list[tuple[Study, StudySummary]]:
        """Studies with their series count, instance count (results included) and modalities."""
        studies = self.studies(study_uids)
        ids = [st.id for st in studies]
        summaries = {st.study_instance_uid: StudySummary() for st in studies}
        uid_of = {st.id: st.study_instance_uid for st in studies}
        with Session(self.engine) as s:
            q = select(Series.study_id, Series.modality, Series.instance_count).where(
                col(Series.study_id).in_(ids)
            )
            for study_id, modality, count in s.exec(q).all():
                summary = summaries[uid_of[study_id]]
                summary.add(modality, count)
            rq = select(Result.study_instance_uid, Result.series_instance_uid, Result.path, Result.kind)
            rq = rq.where(col(Result.study_instance_uid).in_(list(summaries)))
            seen: set[str] = set()
            for st_uid, se_uid, path, _kind in s.exec(rq).all():
                new = se_uid not in seen
                seen.add(se_uid)
                modality = str(_header_of(self.data_dir / path).get("Modality", "")) if new else ""
                summaries[st_uid].add(modality, 1, new_series=new)
        return [(st, summaries[st.study_instance_uid]) for st in studies]

    def sample_path(self, study_uid: str) -> Path | None:
        """The file of one received instance of a study (to read study-level attributes from)."""
        with Session(self.engine) as s:
            first = s.exec(
                select(Instance.path)
                .join(Series, col(Series.id) == Instance.series_id)
                .join(Study, col(Study.id) == Series.study_id)
                .where(Study.study_instance_uid == study_uid)
                .limit(1)
            ).first()
        return self.data_dir / first if first else None

    def study(self, study_uid: str) -> Study:
        """The study with this UID; :class:`NotFoundError` if the index has none."""
        found = self.studies([study_uid])
        if not found:
            raise NotFoundError(f"no study {study_uid}")
        return found[0]

    def series(self, study_uid: str | None) -> list[SeriesEntry]:
        """Every series (of one study, or of all), received and result series, with their instances."""
        with Session(self.engine) as s:
            q = select(Series, Study.study_instance_uid).join(Study, col(Study.id) == Series.study_id)
            if study_uid is not None:
                q = q.where(Study.study_instance_uid == study_uid)
            entries: dict[str, SeriesEntry] = {}
            for se, st_uid in s.exec(q.order_by(col(Series.id))).all():
                entries[se.series_instance_uid] = SeriesEntry(
                    st_uid, se.series_instance_uid, se.modality, se.series_description, se.series_number
                )
            iq = select(Instance, Series.series_instance_uid).join(
                Series, col(Series.id) == Instance.series_id
            )
            if study_uid is not None:
                iq = iq.where(col(Series.series_instance_uid).in_(list(entries)))
            for inst, se_uid in s.exec(iq.order_by(col(Instance.instance_number), col(Instance.id))).all():
                entry = entries[se_uid]
                entry.instances.append(
                    IndexedInstance(
                        entry.study_instance_uid,
                        se_uid,
                        inst.sop_instance_uid,
                        inst.sop_class_uid,
                        inst.instance_number,
                        self.data_dir / inst.path,
                    )
                )
            self._add_results(s, entries, study_uid)
        return list(entries.values())

    def _add_results(self, s: Session, entries: dict[str, SeriesEntry], study_uid: str | None) -> None:
        """Add radloop's result series (of one study, or of all) to ``entries``."""
        rq = select(Result)
        if study_uid is not None:
            rq = rq.where(Result.study_instance_uid == study_uid)
        for res in s.exec(rq.order_by(col(Result.id))).all():
            self._add_result(entries, res)

    def _add_result(self, entries: dict[str, SeriesEntry], res: Result) -> None:
        path = self.data_dir / res.path
        if res.series_instance_uid not in entries:
            head = _header_of(path)
            entries[res.series_instance_uid] = SeriesEntry(
                res.study_instance_uid,
                res.series_instance_uid,
                str(head.get("Modality", "")),
                str(head.get("SeriesDescription", "")),
                _int(head.get("SeriesNumber")),
            )
        head = _header_of(path)
        entries[res.series_instance_uid].instances.append(
            IndexedInstance(
                res.study_instance_uid,
                res.series_instance_uid,
                res.sop_instance_uid,
                res.sop_class_uid,
                _int(head.get("InstanceNumber")),
                path,
            )
        )

    def result_series(self, study_uid: str | None) -> list[SeriesEntry]:
        """The series of radloop's results (of one study, or of all), with their instances."""
        entries: dict[str, SeriesEntry] = {}
        with Session(self.engine) as s:
            self._add_results(s, entries, study_uid)
        return list(entries.values())

    def _received_series(self, study_uid: str | None, match: Mapping[str, str]) -> Select[Any]:
        """Received series (with at least one instance) matching ``match``, as a SQL query."""
        first = (
            select(Instance.path)
            .where(Instance.series_id == Series.id)
            .order_by(col(Instance.instance_number), col(Instance.id))
            .limit(1)
            .scalar_subquery()
        )
        count = select(func.count(col(Instance.id))).where(Instance.series_id == Series.id).scalar_subquery()
        q = (
            sa_select(Series, Study, count.label("n"), first.label("first"))
            .join(Study, col(Study.id) == Series.study_id)
            .where(count > 0)
        )
        if study_uid is not None:
            q = q.where(col(Study.study_instance_uid) == study_uid)
        for keyword, pattern in match.items():
            condition = sql_match(_COLUMNS[keyword], pattern, keyword)
            if condition is not None:
                q = q.where(condition)
        return q

    def series_page(
        self, study_uid: str | None, match: Mapping[str, str], offset: int, limit: int
    ) -> list[SeriesHit]:
        """One page of matching received series, in index order, matched and paged in SQL."""
        q = self._received_series(study_uid, match).order_by(col(Series.id)).offset(offset).limit(limit)
        hits = []
        with Session(self.engine) as s:
            for se, st, n, first in s.execute(q).all():
                entry = SeriesEntry(
                    st.study_instance_uid,
                    se.series_instance_uid,
                    se.modality,
                    se.series_description,
                    se.series_number,
                )
                row = {**_study_row(st, None), **_series_row(entry), "NumberOfSeriesRelatedInstances": str(n)}
                hits.append(SeriesHit(entry, row, self.data_dir / first))
        return hits

    def series_count(self, study_uid: str | None, match: Mapping[str, str]) -> int:
        """How many received series match (to page on into the result series)."""
        q = self._received_series(study_uid, match).subquery()
        with Session(self.engine) as s:
            return int(s.execute(sa_select(func.count()).select_from(q)).scalar_one())

    def one_series(self, study_uid: str, series_uid: str) -> SeriesEntry:
        """One series; :class:`NotFoundError` if the study has no such series."""
        for entry in self.series(study_uid):
            if entry.series_instance_uid == series_uid:
                return entry
        raise NotFoundError(f"no series {series_uid} in study {study_uid}")

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[IndexedInstance]:
        """Instances of a study (or one series, or one instance); :class:`NotFoundError` if none."""
        entries = self.series(study_uid) if series_uid is None else [self.one_series(study_uid, series_uid)]
        found = [i for e in entries for i in e.instances if sop_uid is None or i.sop_instance_uid == sop_uid]
        if not found:
            what = f"instance {sop_uid}" if sop_uid else f"series {series_uid}" if series_uid else "instances"
            raise NotFoundError(f"no {what} in study {study_uid}")
        return found


@lru_cache(maxsize=1024)
def _header_cached(path: str, mtime_ns: int) -> Dataset:
    """Small headers only (:func:`small_header`, 64 KB at most): 1,024 of them hold 64 MB at most."""
    try:
        return small_header(Path(path))
    except InvalidInstanceError as e:
        log.warning("cannot read the header of %s: %s", path, e)
        return Dataset()


def _header_of(path: Path) -> Dataset:
    """The header of a stored file (cached by path and modification time)."""
    try:
        return _header_cached(str(path), path.stat().st_mtime_ns)
    except OSError as e:
        log.warning("cannot read %s: %s", path, e)
        return Dataset()


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- searches


UrlFor = Callable[..., str]


def search_studies(index: ReadIndex, query: QidoQuery, url_for: UrlFor) -> list[dict[str, Any]]:
    """QIDO-RS Search for Studies: DICOM JSON objects, newest study first."""
    uid_filter = query.match.get("StudyInstanceUID")
    uids = [u.strip() for u in uid_filter.split(",")] if uid_filter and "*" not in uid_filter else None
    summaries = index.study_summaries(uids)
    rows = [_study_row(st, summary) for st, summary in summaries]
    page = _filter(rows, query, STUDY_KEYS)[query.offset : query.offset + query.limit]
    out = []
    for row in page:
        extra = _extras(
            query,
            index.sample_path(row["StudyInstanceUID"]),
            ("StudyTime", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex"),
        )
        out.append(_json(row, extra, url_for(row["StudyInstanceUID"])))
    return out


def _study_row(st: Study, summary: StudySummary | None) -> dict[str, str]:
    row = {
        "StudyInstanceUID": st.study_instance_uid,
        "PatientID": st.patient_id,
        "PatientName": st.patient_name,
        "AccessionNumber": st.accession_number,
        "StudyDate": st.study_date,
        "StudyDescription": st.study_description,
    }
    if summary is not None:
        row["ModalitiesInStudy"] = "\\".join(sorted(summary.modalities))
        row["NumberOfStudyRelatedSeries"] = str(summary.series)
        row["NumberOfStudyRelatedInstances"] = str(summary.instances)
    return row


def search_series(
    index: ReadIndex, study_uid: str | None, query: QidoQuery, url_for: UrlFor
) -> list[dict[str, Any]]:
    """QIDO-RS Search for Series (in one study, or in all): received series first, then result series.

    Received series are matched, counted and paged in SQL (a ``limit=1`` reads one row); result
    series (a few per job, their attributes in their headers) are matched here after them.
    """
    if study_uid is not None:
        index.study(study_uid)
    keys = SERIES_KEYS + (("StudyInstanceUID",) + STUDY_KEYS[1:-1] if study_uid is None else ())
    active = {k: v for k, v in query.match.items() if k in keys}
    hits = index.series_page(study_uid, active, query.offset, query.limit)
    if len(hits) < query.limit:
        received = index.series_count(study_uid, active)
        results = [e for e in index.result_series(study_uid) if e.instances]
        studies = {
            st.study_instance_uid: st for st in index.studies(list({e.study_instance_uid for e in results}))
        }
        rows = []
        for e in results:
            row = _series_row(e)
            if study_uid is None and e.study_instance_uid in studies:
                row = {**_study_row(studies[e.study_instance_uid], None), **row}
            rows.append((row, e))
        matching = [(r, e) for r, e in rows if all(matches(r.get(k, ""), v, k) for k, v in active.items())]
        start = max(0, query.offset - received)
        for row, e in matching[start : start + query.limit - len(hits)]:
            hits.append(SeriesHit(e, row, e.instances[0].path))
    out = []
    for hit in hits:
        row = hit.row if study_uid is None else {k: v for k, v in hit.row.items() if k in _SERIES_ROW_KEYS}
        extra = _extras(
            query,
            hit.first_path,
            ("SeriesDate", "SeriesTime", "BodyPartExamined", "PerformedProcedureStepStartDate"),
        )
        out.append(_json(row, extra, url_for(hit.entry.study_instance_uid, hit.entry.series_instance_uid)))
    return out


_SERIES_ROW_KEYS = ("StudyInstanceUID", *SERIES_KEYS, "NumberOfSeriesRelatedInstances")


def _series_row(e: SeriesEntry) -> dict[str, str]:
    return {
        "StudyInstanceUID": e.study_instance_uid,
        "SeriesInstanceUID": e.series_instance_uid,
        "Modality": e.modality,
        "SeriesDescription": e.series_description,
        "SeriesNumber": "" if e.series_number is None else str(e.series_number),
        "NumberOfSeriesRelatedInstances": str(len(e.instances)),
    }


def search_instances(
    index: ReadIndex, study_uid: str, series_uid: str | None, query: QidoQuery, url_for: UrlFor
) -> list[dict[str, Any]]:
    """QIDO-RS Search for Instances (of a study, or of one series)."""
    index.study(study_uid)
    entries = index.series(study_uid) if series_uid is None else [index.one_series(study_uid, series_uid)]
    rows, paths = [], {}
    for e in entries:
        for i in e.instances:
            rows.append(
                {
                    **_series_row(e),
                    "SOPInstanceUID": i.sop_instance_uid,
                    "SOPClassUID": i.sop_class_uid,
                    "InstanceNumber": "" if i.instance_number is None else str(i.instance_number),
                }
            )
            paths[i.sop_instance_uid] = i
    for row in rows:
        row.pop("NumberOfSeriesRelatedInstances")
    page = _filter(rows, query, INSTANCE_KEYS + SERIES_KEYS)[query.offset : query.offset + query.limit]
    out = []
    for row in page:
        inst = paths[row["SOPInstanceUID"]]
        extra = _extras(query, inst.path, ("Rows", "Columns", "NumberOfFrames", "BitsAllocated"))
        out.append(
            _json(
                row, extra, url_for(inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
            )
        )
    return out


def _extras(query: QidoQuery, path: Path | None, defaults: tuple[str, ...]) -> Dataset:
    """Attributes read from an instance header: the level's usual ones plus ``includefield``."""
    wanted = list(dict.fromkeys(defaults + query.includefield))
    if path is None:
        return Dataset()
    head = _header_of(path)
    out = Dataset()
    if query.include_all:
        for elem in head:
            if elem.VR != "SQ" and elem.tag.group not in (0x0002, 0x7FE0):
                out.add(elem)
        return out
    for kw in wanted:
        if kw in head:
            out.add(head[kw])
    return out


def _json(row: Mapping[str, str], extra: Dataset, retrieve_url: str) -> dict[str, Any]:
    ds = Dataset()
    for elem in extra:
        ds.add(elem)
    for kw, value in row.items():
        if kw in _COUNT_KEYS or kw in ("SeriesNumber", "InstanceNumber"):
            if value != "":
                setattr(ds, kw, int(value))
            elif kw not in ds:
                setattr(ds, kw, None)
        elif kw == "ModalitiesInStudy":
            ds.ModalitiesInStudy = value.split("\\") if value else None
        else:
            setattr(ds, kw, value or None)
    ds.RetrieveURL = retrieve_url
    return ds.to_json_dict()
