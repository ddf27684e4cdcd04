"""What the API's routes act through: settings, database, pipelines, the store and the puller."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from radloop.connector.assembler import Assembler
from radloop.connector.pull.puller import Puller
from radloop.connector.dicomweb.qido import ReadIndex
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.metrics import registry_for
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog


@dataclass
class AppContext:
    """The running parts the routes use (shared with the rest of ``radloop serve`` when it runs there)."""

    settings: Settings
    engine: Engine
    catalog: PipelineCatalog
    store: InstanceStore
    assembler: Assembler
    puller: Puller
    index: ReadIndex
    metrics: CollectorRegistry

    @classmethod
    def from_parts(
        cls,
        settings: Settings,
        engine: Engine,
        catalog: PipelineCatalog,
        store: InstanceStore,
        assembler: Assembler,
    ) -> AppContext:
        """A context over parts that already exist (``radloop serve`` passes its own)."""
        puller = Puller(settings, engine, store, assembler.on_association_end)
        return cls(
            settings,
            engine,
            catalog,
            store,
            assembler,
            puller,
            ReadIndex(engine, settings.data_dir),
            registry_for(engine),
        )

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        """Everything from the settings alone: schema upgraded, pipelines loaded and validated."""
        from radloop.pipelines.operators import builtin_registry

        db.upgrade(settings)
        engine = db.make_engine(settings)
        catalog = PipelineCatalog.load(settings, builtin_registry())
        store = InstanceStore(settings.data_dir, engine, settings.dicom.min_free_bytes)
        return cls.from_parts(settings, engine, catalog, store, Assembler(settings, engine, catalog))
