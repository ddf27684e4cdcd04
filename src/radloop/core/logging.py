"""Logging set-up for radloop's processes: one format, noisy libraries held at WARNING, and no
patient identifiers in what a handler writes.

pynetdicom logs every DIMSE message at INFO (two lines per C-STORE) and highdicom every copied
module; at INFO those lines cost ingest throughput and drown radloop's own messages.

radloop's own messages name studies and series by UID, never by PatientName or PatientID. A
library's message may still carry a URL radloop asked for (``…/studies?PatientID=…`` in an HTTP
error from a PACS): :class:`RedactPatientQuery` masks such query values in every record the
root handler writes. highdicom warns about a one-component PatientName by quoting it (on stderr,
which is the server's log): that warning is silenced, the name it quotes is PHI.
"""

from __future__ import annotations

import logging
import re
import warnings

NOISY = ("pynetdicom", "highdicom", "alembic.runtime.migration")
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"
"""highdicom's warning that quotes a PatientName (or another person name) it finds odd."""
FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"
_PATIENT_QUERY = re.compile(
    r"(?i)\b(PatientName|PatientID|PatientBirthDate|OtherPatientIDs|00100010|00100020|00100030|00101000)"
    r"(=|%3D)([^&\s'\"]*)"
)


class RedactPatientQuery(logging.Filter):
    """Masks the values of patient attributes in query strings (``PatientID=***``) in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in place (always keeps the record)."""
        text = record.getMessage()
        masked = _PATIENT_QUERY.sub(r"\1\2***", text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


def configure_logging(level: str) -> None:
    """Configure the root logger once per process (idempotent)."""
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactPatientQuery())
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
