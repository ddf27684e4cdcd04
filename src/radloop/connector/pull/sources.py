"""Retrievers: how radloop searches a PACS and retrieves a study from it.

One small protocol, one class per source kind, registered explicitly in :data:`RETRIEVERS` by
the settings type (``dicomweb`` → QIDO-RS + WADO-RS; ``dimse`` → C-FIND + C-MOVE to radloop's
own listener AE, or C-GET). Retrieved instances reach the store through an
:class:`~radloop.connector.ingest.IngestSession` (WADO-RS, C-GET) or through radloop's own SCP
(C-MOVE: the PACS opens an association to the listener AE, which completes the series on
release just like a push).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from radloop.connector.dimse.status import PENDING, SUCCESS, WARNING, for_refusal
from radloop.connector.dimse.tls import tls_args
from radloop.connector.ingest import IngestSession
from radloop.connector.peer_text import shown
from radloop.core.errors import ConfigError, PullError, StoreError
from radloop.core.settings import DicomwebSource, DimseSource

log = logging.getLogger(__name__)
PAGE_SIZE = 100
MAX_PAGES = 100


@dataclass(frozen=True)
class StudyQuery:
    """What to look for: one study, an accession number, and/or a date range, modality and filters."""

    study_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""  # a DICOM date or range, e.g. "20240101-"
    modality: str = ""  # ModalitiesInStudy
    filters: tuple[tuple[str, str], ...] = ()

    def keys(self) -> dict[str, str]:
        """The matching keys with a value (DICOM keywords)."""
        keys = {
            "StudyInstanceUID": self.study_instance_uid,
            "AccessionNumber": self.accession_number,
            "StudyDate": self.study_date,
            "ModalitiesInStudy": self.modality,
            **dict(self.filters),
        }
        return {k: v for k, v in keys.items() if v}


@dataclass(frozen=True)
class StudyMatch:
    """A study a source has: its UID and what identifies it to people (no PHI kept beyond these)."""

    study_instance_uid: str
    accession_number: str = ""
    study_date: str = ""


@dataclass(frozen=True)
class Retrieved:
    """Sub-operation counts of one retrieve."""

    completed: int
    failed: int
    warning: int = 0


SessionFactory = Callable[[str], IngestSession]
"""Makes the ingest session for instances retrieved on our side; the argument is the calling AE."""


class Retriever(Protocol):
    """Searches a source for studies and retrieves one."""

    def find(self, query: StudyQuery) -> list[StudyMatch]: ...

    def retrieve(self, study: StudyMatch, sessions: SessionFactory) -> Retrieved: ...


def _match_of(ds: Dataset) -> StudyMatch | None:
    uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    if not uid:
        return None
    return StudyMatch(uid, str(ds.get("AccessionNumber", "") or ""), str(ds.get("StudyDate", "") or ""))


# --------------------------------------------------------------------------- DICOMweb


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout on every request (dicomweb-client sets none)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


class DicomwebRetriever:
    """QIDO-RS search and WADO-RS retrieve (as stored: ``transfer-syntax=*``) with dicomweb-client."""

    def __init__(self, config: DicomwebSource) -> None:
        self.config = config
        session = _TimeoutSession(config.timeout_s)
        self.client = DICOMwebClient(config.url, session=session, headers=config.header_values())

    def find(self, query: StudyQuery) -> list[StudyMatch]:
        """Page through the matches with ``limit``/``offset``; stops on a short page, and on a page with
        nothing new (servers that ignore ``offset`` would otherwise be asked forever)."""
        found: dict[str, StudyMatch] = {}
        offset = 0
        for _ in range(MAX_PAGES):
            page = self._search(query, offset)
            new = [m for m in page if m.study_instance_uid not in found]
            found.update((m.study_instance_uid, m) for m in new)
            if len(page) < PAGE_SIZE or not new:
                break
            offset += len(page)
        return list(found.values())

    def _search(self, query: StudyQuery, offset: int) -> list[StudyMatch]:
        fields = ["StudyInstanceUID", "AccessionNumber", "StudyDate"]
        try:
            items = self.client.search_for_studies(
                search_filters=query.keys(), fields=fields, limit=PAGE_SIZE, offset=offset
            )
        except (requests.RequestException, ValueError) as e:
            raise PullError(f"QIDO-RS search at {self.config.url} failed: {e}") from e
        matches = (_match_of(Dataset.from_json(item)) for item in items)
        return [m for m in matches if m is not None]

    def retrieve(self, study: StudyMatch, sessions: SessionFactory) -> Retrieved:
        completed = failed = 0
        session = sessions(self.config.name)
        try:
            for ds in self._instances(study.study_instance_uid):
                try:
                    session.store_dataset(ds)
                    completed += 1
                except StoreError as e:
                    failed += 1
                    log.warning(
                        "source %s: instance of study %s not stored: %s",
                        self.config.name,
                        study.study_instance_uid,
                        e,
                    )
        except (requests.RequestException, ValueError) as e:
            raise PullError(
                f"WADO-RS retrieve from {self.config.url} failed after {completed} instance(s): {e}"
            ) from e
        session.end()
        return Retrieved(completed, failed)

    def _instances(self, study_uid: str) -> Iterator[Dataset]:
        return self.client.iter_study(study_uid, media_types=(("application/dicom", "*"),))


# --------------------------------------------------------------------------- DIMSE


class DimseRetriever:
    """C-FIND at STUDY level, then C-MOVE to our listener AE (or C-GET on the same association)."""

    def __init__(self, config: DimseSource) -> None:
        self.config = config

    def _associate(self, contexts: list[str], get_session: IngestSession | None = None) -> Association:
        c = self.config
        ae = AE(ae_title=c.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = c.timeout_s
        for uid in contexts:
            ae.add_requested_context(uid)
        roles: list[Any] = []
        handlers: list[Any] = []
        if get_session is not None:
            for cx in StoragePresentationContexts[: 128 - len(contexts)]:
                sop_class = str(cx.abstract_syntax)
                ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES[:])
                roles.append(build_role(sop_class, scp_role=True))
            handlers = [(evt.EVT_C_STORE, _store_handler(get_session))]
        try:
            secure = tls_args(c.tls, c.host, f"sources[{c.name}].tls")
        except ConfigError as e:  # a certificate file removed since start: this pull fails, visibly
            raise PullError(str(e)) from e
        assoc = ae.associate(
            c.host, c.port, ae_title=c.ae_title, ext_neg=roles, evt_handlers=handlers, tls_args=secure
        )
        if not assoc.is_established:
            over = " over DICOM TLS (or the handshake failed)" if secure else ""
            raise PullError(
                f"no association with {c.ae_title}@{c.host}:{c.port} as {c.calling_ae}{over} "
                "(rejected, aborted or unreachable; is our AE known to the PACS?)"
            )
        return assoc

    def find(self, query: StudyQuery) -> list[StudyMatch]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for kw in ("StudyInstanceUID", "AccessionNumber", "StudyDate"):
            setattr(identifier, kw, "")
        for kw, value in query.keys().items():
            setattr(identifier, kw, value)
        assoc = self._associate([StudyRootQueryRetrieveInformationModelFind])
        matches: list[StudyMatch] = []
        try:
            for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = int(getattr(status, "Status", -1))
                if code in PENDING and found is not None:
                    match = _match_of(found)
                    if match is not None:
                        matches.append(match)
                elif code != SUCCESS:
                    raise PullError(f"C-FIND at {self.config.ae_title} failed: {_describe(status)}")
        finally:
            assoc.release()
        return matches

    def retrieve(self, study: StudyMatch, sessions: SessionFactory) -> Retrieved:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study.study_instance_uid
        if self.config.retrieve == "c-get":
            session = sessions(self.config.ae_title)
            model = StudyRootQueryRetrieveInformationModelGet
            assoc = self._associate([model], get_session=session)
            responses = assoc.send_c_get(identifier, model)
        else:
            session = None
            model = StudyRootQueryRetrieveInformationModelMove
            assoc = self._associate([model])
            responses = assoc.send_c_move(identifier, self.config.listener_ae_title, model)
        try:
            outcome = _final_counts(responses, self.config.ae_title)
        finally:
            assoc.release()
        if session is not None:
            session.end()
        return outcome


def _store_handler(session: IngestSession) -> Callable[[evt.Event], int]:
    """C-STORE sub-operations of a C-GET: stored through the ingest session."""

    def handle(event: evt.Event) -> int:
        try:
            session.store_file(event.encoded_dataset(include_meta=True))  # checked by connector/sanity
        except StoreError as e:
            code = for_refusal(e)
            log.warning("C-GET sub-operation refused with 0x%04X: %s", code, shown(e, 300))
            return code
        return SUCCESS

    return handle


def _final_counts(responses: Iterator[tuple[Dataset, Dataset | None]], peer: str) -> Retrieved:
    final: Dataset | None = None
    for status, _identifier in responses:
        if "Status" not in status:
            raise PullError(f"retrieve from {peer}: no response (timeout or abort)")
        final = status
    if final is None:
        raise PullError(f"retrieve from {peer}: no response")
    code = int(final.Status)
    completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    warning = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    if code not in (SUCCESS, WARNING) and completed == 0:
        raise PullError(f"retrieve from {peer} failed: {_describe(final)} ({failed} sub-operation(s) failed)")
    return Retrieved(completed, failed, warning)


def _describe(status: Dataset) -> str:
    code = int(getattr(status, "Status", -1))
    comment = str(status.get("ErrorComment", "") or "")
    return f"status 0x{code:04X}{' ' + comment if comment else ''}"


RETRIEVERS: dict[type, type] = {DicomwebSource: DicomwebRetriever, DimseSource: DimseRetriever}


def retriever_for(config: DicomwebSource | DimseSource) -> Retriever:
    """The retriever for a source config (by its type)."""
    return RETRIEVERS[type(config)](config)  # type: ignore[no-any-return]
