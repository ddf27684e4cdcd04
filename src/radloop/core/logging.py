"""Logging set-up for radloop's processes: one format, noisy libraries held at WARNING.

pynetdicom logs every DIMSE message at INFO (two lines per C-STORE) and highdicom every copied
module; at INFO those lines cost ingest throughput and drown radloop's own messages.
"""

from __future__ import annotations

import logging

NOISY = ("pynetdicom", "highdicom", "alembic.runtime.migration")
FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: str) -> None:
    """Configure the root logger once per process (idempotent)."""
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
