"""The set of pipelines a server runs: the reference pipelines shipped with radloop plus the
user's folders, every file validated at start (a broken file stops the server with its error)."""

from __future__ import annotations

import logging
from pathlib import Path

from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.pipelines.registry import OperatorRegistry
from radloop.pipelines.spec import Pipeline, load_pipeline

log = logging.getLogger(__name__)
REFERENCE_DIR = Path(__file__).parent / "reference"


class PipelineCatalog:
    """Pipelines by name."""

    def __init__(self, pipelines: list[Pipeline]) -> None:
        self._by_name: dict[str, Pipeline] = {}
        for p in pipelines:
            if p.name in self._by_name:
                raise ConfigError(
                    f"pipeline name {p.name!r} is defined twice: "
                    f"{self._by_name[p.name].source} and {p.source}"
                )
            self._by_name[p.name] = p

    @classmethod
    def load(cls, settings: Settings, registry: OperatorRegistry) -> PipelineCatalog:
        """Load and validate every pipeline file the settings point at."""
        folders = ([REFERENCE_DIR] if settings.pipelines.include_reference else []) + list(
            settings.pipelines.dirs
        )
        pipelines = []
        for folder in folders:
            if not folder.is_dir():
                raise ConfigError(f"pipelines.dirs: {folder} is not a folder")
            for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
                pipelines.append(load_pipeline(path, registry))
        log.info("loaded %d pipelines: %s", len(pipelines), ", ".join(p.name for p in pipelines))
        return cls(pipelines)

    def get(self, name: str) -> Pipeline:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"no pipeline named {name!r} (have: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def all(self) -> list[Pipeline]:
        return [self._by_name[n] for n in self.names()]
