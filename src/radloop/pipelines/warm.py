"""Warm models: a worker process loads the models of its pipelines when it starts, not at the
first job, and keeps them in a least-recently-used cache bounded by a memory budget.

A process's :class:`ModelCache` (``workers.model_memory_mb``) is part of its
:class:`~radloop.runtime.Runtime` (:attr:`~radloop.runtime.Runtime.models`); a worker process's
job runner resolves models through it. The worker's initializer calls :func:`warm_models`, which
loads, in order, the models named by the pipelines that listeners route to, then those of the
other pipelines, while they fit the budget. Jobs run elsewhere (tests, ``radloop run-pipeline``)
resolve through their own :class:`~radloop.inference.resolve.ModelResolver`.

The first SEG a process writes also pays a one-off second or so inside highdicom (its tables of
IODs and modules load on first use), so :func:`warm_models` writes one tiny SEG in memory too.

A model's memory is estimated from its weights file (TorchScript and ONNX weights load at about
their file size); a model served by Triton costs nothing here. A job that needs a model larger
than the whole budget still gets it: the cache then holds that model alone.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from radloop.core.errors import ModelNotFoundError, RadloopError
from radloop.core.settings import Settings
from radloop.inference.resolve import ModelResolver, ResolvedModel
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.spec import Pipeline

log = logging.getLogger(__name__)

MB = 1 << 20


@dataclass(frozen=True)
class _Entry:
    model: ResolvedModel
    size_bytes: int


class ModelCache:
    """Resolved models by name, least recently used first, within ``budget_bytes``."""

    def __init__(self, resolver: ModelResolver, budget_bytes: int) -> None:
        self.resolver = resolver
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        """Estimated bytes of the models held."""
        return sum(e.size_bytes for e in self._entries.values())

    def names(self) -> list[str]:
        """Models held, least recently used first."""
        with self._lock:
            return list(self._entries)

    def serves(self, resolver: ModelResolver) -> bool:
        """Whether a job using ``resolver`` would get the same models from this cache."""
        return resolver is self.resolver or (
            resolver.settings == self.resolver.settings and resolver.store.root == self.resolver.store.root
        )

    def resolve(self, name: str) -> ResolvedModel:
        """:meth:`get` (this cache is a :class:`~radloop.inference.resolve.ModelSource`)."""
        return self.get(name)

    def shadows(self, name: str) -> list[ResolvedModel]:
        """Shadow versions of ``name``, from the resolver (they run beside production, uncached here)."""
        return self.resolver.shadows(name)

    def summary(self) -> str:
        """E.g. ``deepbet_bbox, deepbet_mask (2 models, 1140 MB of 4096 MB)``; "" if none is held."""
        names = self.names()
        if not names:
            return ""
        used_mb, budget_mb = self.used_bytes // MB, self.budget_bytes // MB
        return f"{', '.join(names)} ({len(names)} models, {used_mb} MB of {budget_mb} MB)"

    def get(self, name: str) -> ResolvedModel:
        """The model ``name``, loaded if needed; least recently used models make room for it."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._load(name, evict=True)
                assert entry is not None
            self._entries.move_to_end(name)
            return entry.model

    def warm(self, name: str) -> bool:
        """Load ``name`` if it fits beside the models already held (nothing is evicted for it)."""
        with self._lock:
            return name in self._entries or self._load(name, evict=False) is not None

    def _load(self, name: str, *, evict: bool) -> _Entry | None:
        size, budget_mb = self.estimate_bytes(name), self.budget_bytes // MB
        if not evict and self.used_bytes + size > self.budget_bytes:
            log.info("model %s (%d MB) not warmed: over the %d MB budget", name, size // MB, budget_mb)
            return None
        evicted_any = False
        while self._entries and self.used_bytes + size > self.budget_bytes:
            evicted, _ = self._entries.popitem(last=False)
            self.resolver.forget(evicted)
            evicted_any = True
            log.info("model %s evicted (least recently used) to make room for %s", evicted, name)
        if evicted_any:
            _collect_evicted()
        if size > self.budget_bytes:
            log.warning("model %s (%d MB) alone exceeds the %d MB budget", name, size // MB, budget_mb)
        entry = _Entry(self.resolver.resolve(name), size)
        self._entries[name] = entry
        return entry

    def estimate_bytes(self, name: str) -> int:
        """Memory a model takes in this process: its weights file's size; 0 on Triton or unknown."""
        if self.resolver.settings.backend_for(name).backend == "triton":
            return 0
        stored = self.resolver.store.find(name)
        if stored is None or not stored.path.is_file():
            return 0
        return stored.path.stat().st_size


def _collect_evicted() -> None:
    """Let the garbage collector reach what evicted models leave behind, before the next loads.

    A worker process freezes the objects it holds after start-up, its warm models among them
    (:func:`radloop.pipelines.executor.freeze_start_up_objects`); frozen objects in reference
    cycles are never collected, so an evicted model would keep its memory. Unfreezing gives up
    the faster collections for the rest of this (rare, over-budget) process's life.
    """
    gc.unfreeze()
    gc.collect()


def warm_models(cache: ModelCache, settings: Settings, catalog: PipelineCatalog) -> None:
    """Worker start: load into ``cache`` the models of ``catalog``'s pipelines that fit its budget
    (listeners' pipelines first), unless ``workers.warm_models`` is off. A model that cannot be
    loaded is logged and left for the job to report."""
    if not settings.workers.warm_models:
        return
    for name in models_to_warm(settings, catalog):
        try:
            cache.warm(name)
        except ModelNotFoundError:
            log.info("model %s not warmed: not in the model store", name)
        except RadloopError as e:
            log.warning("model %s not warmed: %s", name, e)
    log.info("warm models: %s", cache.summary() or "none")
    prime_seg_writer()


def prime_seg_writer() -> None:
    """Build (in memory) a SEG of a tiny synthetic two-slice MR series, so that highdicom's lazily
    loaded tables are ready before the first job's SEG."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    sources = []
    for z in range(2):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.Modality = frame_of_reference, "MR"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "0", "Warm^Up", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "",
            "",
            "",
            "",
            "",
        )
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        sources.append(ds)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="warm-up",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("12738006", "SCT", "Brain"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    mask = np.zeros((2, 4, 4), dtype=np.uint8)
    mask[:, 1:3, 1:3] = 1
    hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="radloop",
        manufacturer_model_name="radloop",
        software_versions="0",
        device_serial_number="0",
    )


def models_to_warm(settings: Settings, catalog: PipelineCatalog) -> list[str]:
    """Model names of the catalog's pipelines, without repeats: pipelines a listener names first."""
    named = [p for lst in settings.dicom.listeners for p in lst.pipelines if p in catalog]
    order = list(dict.fromkeys([*named, *catalog.names()]))
    return list(dict.fromkeys(m for name in order for m in pipeline_models(catalog.get(name))))


def pipeline_models(pipeline: Pipeline) -> list[str]:
    """Store models a pipeline's operators load by name (not those given as file paths)."""
    return [name for bound in pipeline.steps for name in options_models(bound.options)]


def options_models(options: BaseModel) -> list[str]:
    """Store models named by one operator's options."""
    # imported here: the operators resolve their models through this module
    from radloop.pipelines.operators.brain_extraction import BrainExtractionOptions
    from radloop.pipelines.operators.inference import ClassifyOptions, ParallelSegmentOptions, SegmentOptions

    if isinstance(options, SegmentOptions | ClassifyOptions):
        return [options.model]
    if isinstance(options, ParallelSegmentOptions):
        return list(options.models)
    if isinstance(options, BrainExtractionOptions):
        return [
            *([options.bbox_model] if options.bbox_model_path is None else []),
            *([options.mask_model] if options.model_path is None else []),
        ]
    return []
