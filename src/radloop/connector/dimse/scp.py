"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, on several AE titles.

One port, several called AE titles (``dicom.listeners``); each has an allowlist of callers.
Handlers follow pynetdicom's two kinds of callback:

* intervention (``EVT_C_STORE``, ``EVT_C_ECHO``): one handler each, returns a status fast. The
  C-STORE handler writes the instance durably and indexes it, then answers; it never runs
  pipelines;
* notification (association requested / released / aborted, connection opened): log, enforce the
  allowlist, tell the assembler which series an association carried; never raise.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from radloop.connector.dimse.ups_scp import UpsHandlers
from radloop.connector.store import InstanceStore, describe
from radloop.core.errors import DiskFullError, InvalidInstanceError, StoreError
from radloop.core.settings import ListenerSettings, Settings

log = logging.getLogger(__name__)

PIXEL_DATA_GROUP = Tag(0x7FE0, 0x0000)  # (Float/Double) Pixel Data and what follows
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

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
    ) -> None:
        """``ups``: also serve the UPS DIMSE services (the AI worklist) on these AE titles."""
        self.settings = settings
        self.ups = ups
        self.store = store
        self.on_association_end = on_association_end
        self._server: ThreadedAssociationServer | None = None
        self._series_by_assoc: dict[int, set[int]] = defaultdict(set)
        self._lock = threading.Lock()
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        cfg = self.settings.dicom
        ae = AE(ae_title="RADLOOP")
        ae.maximum_pdu_size = cfg.max_pdu
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = False  # several titles on one port: checked in _on_requested
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        if self.ups is not None:
            self.ups.add_contexts(ae)
        return ae

    def start(self) -> int:
        """Listen (non-blocking); returns the bound port (useful when configured as 0)."""
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
        server = self.ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
        assert server is not None  # non-blocking start returns the server
        self._server = server
        port = int(server.server_address[1])
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
        """Enforce called-AE and caller allowlists, and the disk floor, before negotiation."""
        assoc = event.assoc
        called, calling = _titles(assoc)
        host = assoc.requestor.address
        listener = self.settings.listener(called)
        reason: tuple[int, int, int] | None = None
        if listener is None:
            reason = REJECT_CALLED_AE
            log.warning(
                "association rejected: called AE %r is not one of ours (caller %r from %s)",
                called,
                calling,
                host,
            )
        elif not _caller_allowed(listener, calling, host):
            reason = REJECT_CALLING_AE
            log.warning(
                "association rejected: caller %r from %s is not allowed on AE %r", calling, host, called
            )
        elif not self.store.has_space():
            reason = REJECT_NO_RESOURCES
            log.error(
                "association rejected: free disk space below the floor (AE %r, caller %r)", called, calling
            )
        if reason is not None:
            assoc.acse.send_reject(*reason)
            assoc.is_rejected = True
            assoc.kill()

    def _on_released(self, event: evt.Event) -> None:
        self._association_ended(event, released=True)

    def _on_aborted(self, event: evt.Event) -> None:
        self._association_ended(event, released=False)

    def _association_ended(self, event: evt.Event, *, released: bool) -> None:
        with self._lock:
            series_ids = self._series_by_assoc.pop(id(event.assoc), set())
        if not series_ids:
            return
        called, _calling = _titles(event.assoc)
        log.info(
            "association %s by %s: %d series", "released" if released else "aborted", called, len(series_ids)
        )
        if released:
            try:
                self.on_association_end(series_ids, called)
            except Exception:  # notification boundary: log, never break the SCP
                log.exception("association-end notification failed")

    # -- interventions ---------------------------------------------------------------------
    def _on_c_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_c_store(self, event: evt.Event) -> int | Dataset:
        assoc = event.assoc
        called, calling = _titles(assoc)
        request = cast(C_STORE, event.request)
        try:
            ds = _header(event)
            info = describe(ds, str(event.context.transfer_syntax), called, calling)
            if info.sop_instance_uid != str(request.AffectedSOPInstanceUID):
                raise InvalidInstanceError(
                    f"SOPInstanceUID {info.sop_instance_uid} differs from the request's "
                    f"AffectedSOPInstanceUID {request.AffectedSOPInstanceUID}"
                )
            stored = self.store.store(event.encoded_dataset(include_meta=True), info, ds)
        except DiskFullError as e:
            log.error("C-STORE from %s refused: %s", calling, e)
            return _status(STATUS_OUT_OF_RESOURCES, str(e))
        except InvalidInstanceError as e:
            log.warning(
                "C-STORE from %s to %s refused (SOP Instance %s): %s",
                calling,
                called,
                request.AffectedSOPInstanceUID,
                e,
            )
            return _status(STATUS_CANNOT_UNDERSTAND, str(e))
        except StoreError as e:
            log.error("C-STORE from %s failed: %s", calling, e)
            return _status(STATUS_OUT_OF_RESOURCES, str(e))
        except Exception as e:  # the DICOM boundary: a decode error in a malformed data set, etc.
            log.exception("C-STORE from %s to %s: cannot process the data set", calling, called)
            return _status(STATUS_CANNOT_UNDERSTAND, f"cannot process data set: {type(e).__name__}: {e}")
        with self._lock:
            self._series_by_assoc[id(assoc)].add(stored.series_id)
        return STATUS_SUCCESS


def _header(event: evt.Event) -> Dataset:
    """The received data set up to (not including) its pixel data: all that indexing needs.

    Decoding the pixel data here would cost a copy of every frame for nothing; the file on disk
    keeps the complete data set exactly as sent. Deflated data sets are decoded in full.
    """
    ts = UID(str(event.context.transfer_syntax))
    if ts.is_deflated:
        return event.dataset
    stream = event.request.DataSet.getvalue()  # type: ignore[union-attr]
    return read_dataset(
        BytesIO(stream),
        ts.is_implicit_VR,
        ts.is_little_endian,
        stop_when=lambda tag, _vr, _length: tag >= PIXEL_DATA_GROUP,
    )


def _titles(assoc: Any) -> tuple[str, str]:
    """(called, calling) AE titles of an association's request, stripped; empty if unknown."""
    primitive = assoc.requestor.primitive
    if primitive is None:
        return "", ""
    return str(primitive.called_ae_title).strip(), str(primitive.calling_ae_title).strip()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: 64 characters at most
    return status


def _caller_allowed(listener: ListenerSettings, calling: str, host: str) -> bool:
    if not listener.allowed_callers:
        return True
    return any(
        (c.ae_title is None or c.ae_title == calling) and (c.host is None or c.host == host)
        for c in listener.allowed_callers
    )
