"""Helpers for the XNAT tests: a quick test pipeline, a stored study with a SEG result, settings.

A plain module like `peers` (pytest puts `tests/` on `sys.path`). The quick pipeline
(`dicom.series_to_volume` → `test.threshold` → `writer.seg`) runs in well under a second on the
synthetic CT of `peers.make_synthetic_ct_series`, so that tests of the XNAT plumbing need not
wait for the brain model; the brain pipeline is used where the issue asks for brain results.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
from pydantic import BaseModel, ConfigDict

import peers
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.ports import AlgorithmIdentification, Code, LabelMap, Segment, Volume
from radloop.pipelines.registry import Operator, OperatorContext, OperatorRegistry
from radloop.pipelines.spec import Pipeline, parse_pipeline_text
from radloop.xnat_plugin.run_pipeline import find_series, run_on_series
from xnat_server import XnatTestServer

XNAT_USER, XNAT_PASSWORD = "radloop", "s3cret-test-password"

THRESHOLD_PIPELINE = """
name: ct-threshold
version: 0.1.0
description: Voxels above a CT value, as a SEG (a test pipeline).
match: {modality: [CT], min_instances: 8}
operators:
  - id: volume
    use: dicom.series_to_volume
    inputs: {series: input.series}
  - id: mask
    use: test.threshold
    with: {level: 300}
    inputs: {volume: volume.volume}
  - id: seg
    use: writer.seg
    with: {series_description: "threshold (test)", series_number: 9902}
    inputs: {labelmap: mask.labelmap}
"""


class ThresholdOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: float = 1000.0


class Threshold(Operator):
    """Test operator: stored values above `level` → label 1."""

    name: ClassVar[str] = "test.threshold"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}
    Options: ClassVar[type[BaseModel]] = ThresholdOptions

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        volume: Volume = inputs["volume"]
        assert isinstance(self.options, ThresholdOptions)
        mask = (np.asarray(volume.array) > self.options.level).astype(np.uint8)
        segment = Segment(
            1, "Dense", Code("91723000", "SCT", "Anatomical Structure"), Code("85756007", "SCT", "Tissue")
        )
        return {"labelmap": LabelMap(mask, volume, (segment,), AlgorithmIdentification("threshold", "0.1"))}


def test_registry() -> OperatorRegistry:
    """The built-in operators plus `test.threshold`."""
    registry = builtin_registry()
    registry.register(Threshold)
    return registry


test_registry.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def threshold_pipeline() -> Pipeline:
    return parse_pipeline_text(THRESHOLD_PIPELINE, Path("ct-threshold.yaml"), test_registry())


def threshold_catalog() -> PipelineCatalog:
    return PipelineCatalog([threshold_pipeline()])


@dataclass(frozen=True)
class StoredCase:
    """A study as a radloop server leaves it: its series in `instances/`, a SEG in `results/`."""

    data_dir: Path
    series_paths: list[Path]
    seg_path: Path

    @property
    def header(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.series_paths[0], stop_before_pixels=True)


def stored_case(data_dir: Path, seed: int = 0) -> StoredCase:
    """Synthetic CT stored under `data_dir/instances/…` and its threshold SEG under `results/…`."""
    staging = data_dir.parent / f"synthetic-{seed}"
    paths = peers.make_synthetic_ct_series(staging, n=12, rows=64, cols=64, seed=seed)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series_dir = data_dir / "instances" / str(first.StudyInstanceUID) / str(first.SeriesInstanceUID)
    series_dir.mkdir(parents=True)
    stored = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        stored.append(Path(shutil.copyfile(p, series_dir / f"{ds.SOPInstanceUID}.dcm")))
    (mounted,) = find_series(series_dir)
    (objects,) = run_on_series(threshold_pipeline(), mounted, data_dir.parent / f"work-{seed}")
    seg = pydicom.dcmread(objects.paths[0], stop_before_pixels=True)
    target = data_dir / "results" / str(seg.StudyInstanceUID) / str(seg.SeriesInstanceUID)
    target.mkdir(parents=True)
    seg_path = Path(shutil.copyfile(objects.paths[0], target / f"{seg.SOPInstanceUID}.dcm"))
    return StoredCase(data_dir, stored, seg_path)


def destination(server: XnatTestServer, name: str = "research-xnat", **extra: Any) -> dict[str, Any]:
    """An `xnat` destination for `server`'s project BRAIN, logging in with user and password."""
    return {
        "kind": "xnat",
        "name": name,
        "url": server.url,
        "project": "BRAIN",
        "user": XNAT_USER,
        "password": XNAT_PASSWORD,
        **extra,
    }


def write_netrc(path: Path, server: XnatTestServer, password: str = XNAT_PASSWORD) -> Path:
    path.write_text(f"machine {server.netloc} login {XNAT_USER} password {password}\n")
    path.chmod(0o600)
    return path


def session_resource_files(
    server: XnatTestServer, project: str, session_label: str, label: str
) -> dict[str, bytes]:
    """`{file name: bytes}` of a session resource, read straight from the test server's archive."""
    session = server.archive.experiment(project, session_label)
    resource = session.resources.get(label)
    return {} if resource is None else {f.name: f.data for f in resource.files.values()}
