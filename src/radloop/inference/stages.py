"""Deployment stages of a model's versions: which one is ``production``, which run as ``shadow``.

Kept beside the versions, one small JSON per model (``<store>/<name>/stages.json``), written
atomically; the versions themselves stay immutable. ``production`` is what pipelines use (no
production staged: the newest version, as before stages existed). A ``shadow`` version runs beside
production on every matching series; its results are stored but never delivered. ``retired``
versions stay in the store for the record but are neither run nor promoted by rollback.

The file keeps every change (``history``), so :func:`rollback` can return to the version that was
production before the current one. The audit rows (who changed what) are the caller's: the CLI
writes them through :mod:`radloop.core.audit`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radloop.core.errors import ConfigError

STAGES_FILE = "stages.json"


class Stage(StrEnum):
    """What a version is used for."""

    shadow = "shadow"
    production = "production"
    retired = "retired"


class StageChange(BaseModel):
    """One change of stage: a version moved to ``stage`` by ``actor`` at ``at``."""

    model_config = ConfigDict(extra="forbid")

    version: str
    stage: Stage
    actor: str
    at: datetime


class ModelStages(BaseModel):
    """The stages of one model's versions (versions not named here have no stage)."""

    model_config = ConfigDict(extra="forbid")

    production: str | None = None
    shadow: list[str] = Field(default_factory=list)
    retired: list[str] = Field(default_factory=list)
    history: list[StageChange] = Field(default_factory=list)

    def stage_of(self, version: str) -> Stage | None:
        """The stage of ``version``, if it has one."""
        if version == self.production:
            return Stage.production
        if version in self.shadow:
            return Stage.shadow
        return Stage.retired if version in self.retired else None

    def with_stage(self, version: str, stage: Stage, actor: str) -> ModelStages:
        """A copy with ``version`` moved to ``stage`` (out of any other); the old production, if
        replaced, keeps no stage (it stays in the store and in the history)."""
        shadow = [v for v in self.shadow if v != version]
        retired = [v for v in self.retired if v != version]
        production = None if self.production == version else self.production
        if stage == Stage.production:
            production = version
        elif stage == Stage.shadow:
            shadow.append(version)
        else:
            retired.append(version)
        change = StageChange(version=version, stage=stage, actor=actor, at=datetime.now(UTC))
        return ModelStages(
            production=production, shadow=shadow, retired=retired, history=[*self.history, change]
        )

    def previous_production(self) -> str | None:
        """The version that was production before the current one and is not retired since."""
        earlier = [c.version for c in self.history if c.stage == Stage.production]
        for version in reversed(earlier):
            if version != self.production and version not in self.retired:
                return version
        return None


def read_stages(folder: Path) -> ModelStages:
    """The stages in ``folder/stages.json`` (none staged if the file is missing)."""
    path = folder / STAGES_FILE
    if not path.is_file():
        return ModelStages()
    try:
        return ModelStages.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as e:
        raise ConfigError(f"{path}: cannot read model stages: {e}") from e


def write_stages(folder: Path, stages: ModelStages) -> None:
    """Write ``folder/stages.json`` atomically."""
    path = folder / STAGES_FILE
    tmp = path.with_name(f".{STAGES_FILE}.tmp")
    tmp.write_text(stages.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
