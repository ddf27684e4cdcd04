"""``writer.sr_change``: a TID 1500 report with the volume now, in the prior study, and the change.

The prior is the same synthetic series as another study of the same patient, a year earlier:
once unchanged (change 0 mL) and once with every spacing × 1.02 (the same voxels are 1.02³ ≈
6.1 % larger in mL), labelled with the same voxels, so the expected numbers are exact.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from helpers_data import ellipsoid, series_ref_of
from helpers_study import volume_ratio, write_prior
from peers import dciodvfy, dciodvfy_report
from radloop.pipelines.operators.study import ScCompareWriter, SrChangeWriter
from radloop.pipelines.ports import AlgorithmIdentification, Code, DicomObjects, LabelMap, Segment, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg

BRAIN = Segment(1, "Brain", Code("91723000", "SCT", "Anatomical Structure"), Code("12738006", "SCT", "Brain"))
ALGORITHM = AlgorithmIdentification(name="radloop-test-model", version="1.0.0")


def _labels(volume: Volume) -> LabelMap:
    shape = volume.array.shape
    mask = ellipsoid(shape, tuple(s / 2 for s in shape), tuple(s * 0.35 for s in shape))
    return LabelMap(mask.astype(np.uint8), volume, (BRAIN,), ALGORITHM)


def _volume(folder: Path) -> Volume:
    paths = sorted(folder.iterdir())
    return load_volume(paths, series_ref_of(paths[0]))


def _report(current: LabelMap, prior: LabelMap | None, tmp_path: Path) -> hd.sr.Comprehensive3DSR:
    seg = write_seg(
        current,
        tmp_path / "seg",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI",
    )
    ctx = OperatorContext(job_id=1, idempotency_key=f"job-{tmp_path.name}", workdir=tmp_path)
    out = SrChangeWriter(SrChangeWriter.Options()).run(
        ctx, {"labelmap": current, "prior_labelmap": prior, "seg": DicomObjects(paths=(seg,), kind="SEG")}
    )
    (path,) = out["sr"].paths
    assert dciodvfy(path) == [], dciodvfy_report(path)
    return hd.sr.srread(path)


def _values(sr: hd.sr.Comprehensive3DSR) -> dict[str, float]:
    """Numeric measurements by "<tracking identifier>/<concept name>"."""
    values = {}
    for item in sr.ContentSequence:
        for sub in item.get("ContentSequence", []):
            for m in sub.get("ContentSequence", []):
                if m.ValueType == "NUM":
                    tracking = [t.TextValue for t in sub.ContentSequence if t.ValueType == "TEXT"]
                    key = f"{tracking[0] if tracking else ''}/{m.ConceptNameCodeSequence[0].CodeMeaning}"
                    values[key] = float(m.MeasuredValueSequence[0].NumericValue)
    return values


@pytest.mark.parametrize("scale", [1.0, 1.02])
def test_change_report_against_an_identical_and_a_larger_prior(
    synthetic_ct_dir: Path, tmp_path: Path, scale: float
) -> None:
    current = _labels(_volume(synthetic_ct_dir))
    prior = _labels(_volume(write_prior(synthetic_ct_dir, tmp_path / "prior", "20230101", scale)))

    sr = _report(current, prior, tmp_path)

    values = _values(sr)
    now, before = values["Brain (current)/Volume"], values["Brain (prior)/Volume"]
    assert before / now == pytest.approx(volume_ratio(scale), rel=1e-4)
    assert values["Brain volume change/Volume change"] == pytest.approx(now - before, abs=1e-6)
    per_year = 100 * (now - before) / before / (365 / 365.25)
    assert values["Brain volume change/Volume change per year"] == pytest.approx(per_year, rel=1e-6)
    if scale == 1.0:
        assert values["Brain volume change/Volume change"] == pytest.approx(0.0, abs=1e-9)
    studies = {str(s.StudyInstanceUID) for s in sr.PertinentOtherEvidenceSequence}
    assert studies == {prior.reference.series.StudyInstanceUID}
    assert {str(s.StudyInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence} == {
        current.reference.series.StudyInstanceUID
    }


def test_without_a_prior_the_report_holds_the_current_volume(synthetic_ct_dir: Path, tmp_path: Path) -> None:
    sr = _report(_labels(_volume(synthetic_ct_dir)), None, tmp_path)
    assert list(_values(sr)) == ["Brain (current)/Volume"]
    assert "PertinentOtherEvidenceSequence" not in sr


def test_side_by_side_capture_of_current_and_prior(synthetic_ct_dir: Path, tmp_path: Path) -> None:
    current = _labels(_volume(synthetic_ct_dir))
    prior = _labels(_volume(write_prior(synthetic_ct_dir, tmp_path / "prior", "20230101", 1.02)))
    ctx = OperatorContext(job_id=1, idempotency_key="job-sc", workdir=tmp_path)

    (path,) = (
        ScCompareWriter(ScCompareWriter.Options())
        .run(ctx, {"labelmap": current, "prior_labelmap": prior})["sc"]
        .paths
    )

    assert dciodvfy(path) == [], dciodvfy_report(path)
    sc = pydicom.dcmread(path)
    rows, columns = current.array.shape[1:]
    assert (sc.Rows, sc.Columns) == (rows + 18, 2 * columns + 8)
    assert sc.StudyInstanceUID == current.reference.series.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
    assert len(sc.SourceImageSequence) == 2
