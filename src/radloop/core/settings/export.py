"""The ``training_export`` section of the settings: how reviewed results become training datasets.

::

    training_export:
      pseudonym_key: "…"     # or RADLOOP_TRAINING_EXPORT__PSEUDONYM_KEY; empty = derived from secret_key
      exports_dir: ""        # where API exports go; empty = <data_dir>/exports

Patient, study, series, case and reviewer pseudonyms are keyed hashes (HMAC-SHA256). The key
never leaves the server: it is not written to an export, only a fingerprint of it (so that an
incremental export into a folder made with another key is refused instead of splitting one
patient under two pseudonyms). Changing the key, or ``secret_key`` when no key of its own is
set, changes every pseudonym: set a dedicated key when ``secret_key`` may be rotated.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from radloop.core.settings.common import Key, StrictModel


class TrainingExportSettings(StrictModel):
    """Training dataset export (``radloop export dataset`` and ``POST /api/exports``)."""

    pseudonym_key: Key | None = Field(
        None, description="Key of the keyed hash that makes pseudonyms; empty = derived from secret_key."
    )
    exports_dir: Path | None = Field(
        None, description="Folder of the exports made through the API; empty = <data_dir>/exports."
    )
