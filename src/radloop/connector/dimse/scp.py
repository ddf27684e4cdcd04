"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, on several AE titles.

One port, several called AE titles (``dicom.listeners``); each has an allowlist of callers.
Listeners with ``tls`` optional or required also (or only) answer on the DICOM TLS port
(:mod:`radloop.connector.dimse.tls`).
Handlers follow pynetdicom's two kinds of callback:

* intervention (``EVT_C_STORE``, ``EVT_C_ECHO``): one handler each, returns a status fast. The
  C-STORE handler checks the data set (:mod:`radloop.connector.sanity`), writes it durably and
  indexes it through the association's :class:`~radloop.connector.ingest.IngestSession`, then
  answers; it never runs pipelines;
* notification (association requested / released / aborted, connection opened): log,
  enforce the allowlist and the association limit, end the association's ingest session (which
  tells the assembler which series it carried); never raise.

Connections are guarded (:mod:`radloop.connector.dimse.guard`): silent, dripping and oversized
peers are closed or aborted before they hold a slot. Status codes: :mod:`.status`. Values a peer
sends (AE titles, UIDs, comments) reach log lines only through :func:`~radloop.connector.peer_text.shown`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from radloop.connector.dimse import status, tls
from radloop.connector.dimse.commitment import StorageCommitmentSCP
from radloop.connector.dimse.guard import GuardLimits, requested_associations, start_guarded_server
from radloop.connector.dimse.store_fast import StoreRequest
from radloop.connector.dimse.ups_scp import UpsHandlers
from radloop.connector.ingest import AssociationTracker, IngestSession, part10_prefix
from radloop.connector.peer_text import escape_library_logs, shown
from radloop.connector.sanity import check_instance, too_large
from radloop.connector.store import InstanceStore
from radloop.core.errors import StoreError
from radloop.core.settings import ListenerSettings, Settings

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_NO_RESOURCES = (0x02, 0x03, 0x02)  # transient, local limit exceeded

SeriesCallback = Callable[[set[int], str], None]


class StorageSCP:
    """Owns the pynetdicom AE and server; ``on_association_end(series_ids, called_ae)`` is notified."""

    def __init__(
        self,
        settings: Settings,
        store: InstanceStore,
        on_association_end: SeriesCallback,
        ups: UpsHandlers | None = None,
        tracker: AssociationTracker | None = None,
    ) -> None:
        """``ups``: also serve the UPS DIMSE services (the AI worklist) on these AE titles.
        ``tracker``: where associations report the series they carry and their end (a listener
        process passes one that forwards to the main process); by default one in this process
        that calls ``on_association_end`` when a series' last carrying association is released."""
        self.settings = settings
        self.ups = ups
        self.store = store
        self.on_association_end = on_association_end
        self.tracker = tracker or AssociationTracker(on_association_end)
        self.limits = store.limits
        # the fast path drops a data set over the limit the store's checks refuse it by
        self.guard = replace(
            GuardLimits.from_settings(settings.dicom), max_instance_bytes=self.limits.max_instance_bytes
        )
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None  # the DICOM TLS port (dimse.tls)
        self.tls_port: int | None = None
        self._sessions: dict[int, tuple[Any, IngestSession]] = {}
        self._lock = threading.Lock()
        self.commitment = StorageCommitmentSCP(settings.dicom, store)
        self.ae = self._make_ae()
        escape_library_logs("pynetdicom")  # it logs invalid AE titles from a peer verbatim

    def _make_ae(self) -> AE:
        cfg = self.settings.dicom
        ae = AE(ae_title="RADLOOP")
        ae.maximum_pdu_size = cfg.max_pdu
        # pynetdicom counts every open connection; radloop counts requested associations only
        # (_on_requested) and sheds pending connections itself, so this is just a backstop.
        ae.maximum_associations = cfg.max_associations + cfg.max_pending_connections
        ae.acse_timeout = min(cfg.acse_timeout_s, cfg.association_request_timeout_s)
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = False  # several titles on one port: checked in _on_requested
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self.commitment.add_contexts(ae)
        if self.ups is not None:
            self.ups.add_contexts(ae)
        return ae

    def start(self, *, port: int | None = None, reuse_port: bool = False) -> int:
        """Listen (non-blocking); returns the bound port (useful when configured as 0).

        ``port`` overrides ``dicom.port``; ``reuse_port`` binds with ``SO_REUSEPORT`` (one of
        several listener processes, :mod:`radloop.connector.dimse.listeners`)."""
        cfg = self.settings.dicom
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        if self.ups is not None:
            handlers += self.ups.handlers()
        # N-ACTION is Storage Commitment's and UPS's: one handler (an intervention) picks by SOP class
        ups_action = dict(handlers).get(evt.EVT_N_ACTION)
        handlers = [(e, h) for e, h in handlers if e is not evt.EVT_N_ACTION]
        handlers += [
            (evt.EVT_N_ACTION, partial(self._on_n_action, ups_action)),
            (evt.EVT_DIMSE_SENT, self.commitment.on_dimse_sent),
        ]
        if (
            port is None
        ):  # the main process: the DICOM TLS port is its own (listener processes share the plain one)
            self._tls_server = tls.start_tls_server(self.ae, cfg, self.guard, handlers, self.store_request)
            self.tls_port = int(self._tls_server.server_address[1]) if self._tls_server is not None else None
            if not cfg.serves_plain():  # every listener requires TLS: no plain port at all
                return cast(int, self.tls_port)
        address = (cfg.host, cfg.port if port is None else port)
        self._server = start_guarded_server(
            self.ae, address, self.guard, handlers, reuse_port=reuse_port, store_handler=self.store_request
        )
        port = int(self._server.server_address[1])
        log.info(
            "DICOM SCP listening on %s:%s for AE titles %s",
            cfg.host,
            port,
            ", ".join(lst.ae_title for lst in cfg.listeners),
        )
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._tls_server is not None:
            self._tls_server.shutdown()
            self._tls_server = None

    # -- notifications ---------------------------------------------------------------------
    def _on_conn_open(self, event: evt.Event) -> None:
        if self.settings.dicom.tcp_nodelay:
            try:
                sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:  # notification: never break the flow
                log.debug("could not set TCP_NODELAY: %s", e)

    def _on_requested(self, event: evt.Event) -> None:
        """Enforce the association limit, called-AE and caller allowlists and the disk floor."""
        assoc = event.assoc
        called, calling = _titles(assoc)
        host = assoc.requestor.address
        listener = self.settings.listener(called)
        limit = self.settings.dicom.max_associations
        reason: tuple[int, int, int] | None = None
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        peer_cn = tls.peer_common_name(assoc)
        if sum(requested_associations(s) for s in servers) > limit:
            reason = REJECT_NO_RESOURCES
            log.warning(
                "association rejected: %d associations already (max_associations); caller '%s' from %s",
                limit,
                shown(calling),
                host,
            )
        elif listener is None:
            reason = REJECT_CALLED_AE
            log.warning(
                "association rejected: called AE '%s' is not one of ours (caller '%s' from %s)",
                shown(called),
                shown(calling),
                host,
            )
        elif (refusal := tls.transport_refusal(listener, assoc)) is not None:
            reason = REJECT_CALLED_AE
            log.warning("association rejected: %s (caller '%s' from %s)", refusal, shown(calling), host)
        elif not _caller_allowed(listener, calling, host, peer_cn):
            reason = REJECT_CALLING_AE
            log.warning(
                "association rejected: caller '%s' from %s%s is not allowed on AE '%s'",
                shown(calling),
                host,
                f" (certificate CN {shown(peer_cn or 'none')})" if tls.is_tls(assoc) else "",
                called,
            )
        elif not self.store.has_space():
            reason = REJECT_NO_RESOURCES
            log.error(
                "association rejected: free disk space below the floor (AE '%s', caller '%s')",
                called,
                shown(calling),
            )
        if reason is not None:
            assoc.acse.send_reject(*reason)
            assoc.is_rejected = True
            assoc.kill()
            return
        assoc_key = f"{os.getpid()}:{id(assoc)}"  # names it in the tracker, across processes
        session = IngestSession(
            self.store,
            lambda ids, ae: self.tracker.ended(assoc_key, sorted(ids), ae, True),
            called,
            calling,
            self.limits,
            "association",
            on_series=lambda series_id: self.tracker.carrying(assoc_key, series_id),
        )
        with self._lock:
            # released and aborted associations pop their own; drop any whose thread died otherwise
            for key in [k for k, (a, _s) in self._sessions.items() if not a.is_alive()]:
                del self._sessions[key]
            self._sessions[id(assoc)] = (assoc, session)

    def _on_released(self, event: evt.Event) -> None:
        self._association_ended(event, released=True)

    def _on_aborted(self, event: evt.Event) -> None:
        self._association_ended(event, released=False)

    def _association_ended(self, event: evt.Event, *, released: bool) -> None:
        with self._lock:
            entry = self._sessions.pop(id(event.assoc), None)
        if entry is None:
            return
        session = entry[1]
        if not released:
            self.tracker.ended(
                f"{os.getpid()}:{id(event.assoc)}", sorted(session.series_ids), session.called_ae, False
            )
            if session.series_ids:
                log.info(
                    "association aborted by %s: %d series left to the quiet period",
                    shown(session.calling_ae),
                    len(session.series_ids),
                )
            return
        try:
            session.end()
        except Exception:  # notification boundary: log, never break the SCP
            log.exception("association-end notification failed")

    # -- interventions ---------------------------------------------------------------------
    def _on_n_action(self, ups_action: Callable[[evt.Event], Any] | None, event: evt.Event) -> Any:
        if self.commitment.handles(event):
            return self.commitment.on_n_action(event)
        if ups_action is not None:
            return ups_action(event)
        return 0x0118, None  # no such SOP class

    def _on_c_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def _on_c_store(self, event: evt.Event) -> int | Dataset:
        """pynetdicom's ``EVT_C_STORE``: the C-STOREs the fast path leaves to pynetdicom."""
        request = cast(C_STORE, event.request)
        with cast(Any, request.DataSet).getbuffer() as raw:
            return self.store_request(
                event.assoc,
                StoreRequest(
                    context_id=int(event.context.context_id),
                    message_id=int(request.MessageID or 0),
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    data=raw,
                    size=len(raw),
                ),
            )

    def store_request(self, assoc: Any, request: StoreRequest) -> int | Dataset:
        """The C-STORE intervention: check the data set, store it durably, index it, answer.

        Called in the connection's reader thread for plain requests
        (:mod:`~radloop.connector.dimse.store_fast`), from :meth:`_on_c_store` for the rest."""
        called, calling = _titles(assoc)
        sop_uid = request.sop_instance_uid
        with self._lock:
            entry = self._sessions.get(id(assoc))
        session = entry[1] if entry is not None else None
        try:
            if session is None:  # not possible once EVT_REQUESTED accepted the association
                raise StoreError("no ingest session for this association")
            raw = request.data
            if raw is None:  # dropped while it arrived: over max_instance_bytes
                raise too_large(request.size, self.limits)
            header = self._checked_header(raw, request)
            prefix = part10_prefix(request.sop_class_uid, sop_uid, request.transfer_syntax_uid)
            stored = session.store_encoded([prefix, raw], header)  # one writev, no joined copy
        except StoreError as e:
            code = status.for_refusal(e)
            rule = getattr(e, "rule", type(e).__name__)
            level = logging.ERROR if code == status.OUT_OF_RESOURCES else logging.WARNING
            log.log(
                level,
                "C-STORE from '%s' to '%s' refused with 0x%04X (rule %s), SOP Instance %s: %s",
                shown(calling),
                called,
                code,
                rule,
                shown(sop_uid),
                shown(e, 300),
            )
            return _status(code, str(e))
        except Exception as e:  # the DICOM boundary: an unforeseen decode error in a malformed data set
            log.exception("C-STORE from %s to %s: cannot process the data set", shown(calling), called)
            return _status(status.CANNOT_UNDERSTAND, f"cannot process data set: {type(e).__name__}")
        log.debug("stored %s (series %s, duplicate %s)", sop_uid, stored.series_id, stored.duplicate)
        return status.SUCCESS

    def _checked_header(self, raw: memoryview, request: StoreRequest) -> Dataset:
        """The received data set, checked (sanity rules, limits), as its header with ``file_meta``.

        The header stops before the pixel data: decoding it here would cost a copy of every frame
        for nothing; the file on disk keeps the complete data set exactly as sent. A deflated data
        set is inflated in bounded steps, never whole.
        """
        header = check_instance(raw, request.transfer_syntax_uid, self.limits)
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(request.transfer_syntax_uid)
        meta.MediaStorageSOPInstanceUID = UID(request.sop_instance_uid)
        meta.MediaStorageSOPClassUID = UID(request.sop_class_uid)
        header.file_meta = meta  # the session refuses a SOPInstanceUID that differs from it
        return header


def _titles(assoc: Any) -> tuple[str, str]:
    """(called, calling) AE titles of an association's request, stripped; empty if unknown."""
    primitive = assoc.requestor.primitive
    if primitive is None:
        return "", ""
    return str(primitive.called_ae_title).strip(), str(primitive.calling_ae_title).strip()


def _status(code: int, comment: str) -> Dataset:
    result = Dataset()
    result.Status = code
    # LO: 64 characters at most, default repertoire, no backslash (it separates values); the
    # comment may quote peer-supplied text
    result.ErrorComment = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in comment[:64])
    return result


def _caller_allowed(listener: ListenerSettings, calling: str, host: str, peer_cn: str | None) -> bool:
    """``peer_cn``: subject CN of the caller's verified TLS certificate (None: plain TCP or none)."""
    if not listener.allowed_callers:
        return True
    return any(
        (c.ae_title is None or c.ae_title == calling)
        and (c.host is None or c.host == host)
        and (c.certificate_cn is None or c.certificate_cn == peer_cn)
        for c in listener.allowed_callers
    )
