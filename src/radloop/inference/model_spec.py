"""What radloop knows about a model besides its weights: the *model spec* (``model.json``).

Every model in the store has one. It says which file holds the network and in what format,
the input and output tensors (names, numpy dtypes, shapes; ``-1`` = any size, the first axis
is the batch), and how to get from a :class:`~radloop.pipelines.ports.Volume` to the tensor the
network was trained on and back:

* ``orientation``: axis codes (``"RAS"``, ``"LPS"`` …) of the array the network expects, as in
  MONAI's ``Orientationd(axcodes=…)``; ``None`` = the volume's own (frame, row, column) axes.
* ``spacing``: voxel size in mm along those axes (MONAI ``Spacingd(pixdim=…)``); ``None`` = as is.
* ``intensity``: ``scale_range`` (MONAI ``ScaleIntensityRanged``: window ``a_min…a_max`` mapped
  to ``b_min…b_max``), ``zscore`` (``NormalizeIntensityd``) or ``none``.
* ``roi_size``: the patch a sliding-window inferer feeds the network (MONAI
  ``SlidingWindowInferer``); ``None`` = the whole volume in one call.
* ``labels``: output class value → segment name and its coded meaning (SNOMED CT), used for the
  DICOM SEG Segment Sequence or for classification findings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radloop.core.errors import ConfigError
from radloop.inference.backend import ModelMetadata, TensorSpec

SPEC_FILE = "model.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")

ModelFormat = Literal["onnx", "torchscript"]
ModelSource = Literal["onnx", "torchscript", "monai_bundle", "package", "nnunet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpecModel(_Strict):
    """One input or output tensor of the network: name, numpy dtype, shape (``-1`` = any)."""

    name: str = Field(min_length=1)
    dtype: str = "float32"
    shape: list[int] = Field(min_length=1)

    def to_tensor_spec(self) -> TensorSpec:
        """The backend-level :class:`TensorSpec` (validates dtype and shape)."""
        return TensorSpec(self.name, self.dtype, tuple(self.shape))


class CodeSpec(_Strict):
    """A coded concept (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str = Field(min_length=1)
    scheme: str = "SCT"
    meaning: str = Field(min_length=1)


ANATOMICAL_STRUCTURE = CodeSpec(value="91723000", scheme="SCT", meaning="Anatomical Structure")
TISSUE = CodeSpec(value="85756007", scheme="SCT", meaning="Tissue")
FINDING = CodeSpec(value="404684003", scheme="SCT", meaning="Clinical finding")


class LabelSpec(_Strict):
    """One output class: its value (label value, or output index for classification) and meaning."""

    value: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=64)
    category: CodeSpec = ANATOMICAL_STRUCTURE
    type: CodeSpec


class IntensitySpec(_Strict):
    """Intensity normalisation before the network (see the module docstring)."""

    kind: Literal["none", "scale_range", "zscore"] = "none"
    a_min: float | None = None
    a_max: float | None = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    nonzero: bool = Field(False, description="zscore: statistics of non-zero voxels only.")

    @model_validator(mode="after")
    def _check_window(self) -> IntensitySpec:
        if self.kind == "scale_range" and (
            self.a_min is None or self.a_max is None or self.a_max <= self.a_min
        ):
            raise ValueError("intensity scale_range needs a_min < a_max")
        return self


class ModelSpec(_Strict):
    """The spec of one stored model version (``<store>/<name>/<version>/model.json``)."""

    name: str
    version: str
    format: ModelFormat
    source: ModelSource
    file: str = Field(description="The network file, relative to the version folder.")
    task: Literal["segmentation", "classification"] = "segmentation"
    description: str = ""
    inputs: list[TensorSpecModel] = Field(min_length=1)
    outputs: list[TensorSpecModel] = Field(min_length=1)
    orientation: str | None = None
    spacing: list[float] | None = None
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)
    roi_size: list[int] | None = None
    sw_batch_size: int = Field(1, ge=1)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    threshold: float = Field(0.5, description="Single-channel output: foreground where above this.")
    labels: list[LabelSpec] = Field(default_factory=list)
    max_batch_size: int = Field(4, ge=0, description="Triton max_batch_size (0 = no batching).")
    sha256: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"model name {v!r} must be 1-64 letters, digits, '_', '.', '-' (Triton's rule)")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION_RE.match(v):
            raise ValueError(f"model version {v!r} must be 1-64 letters, digits, '_', '.', '+', '-'")
        return v

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str | None) -> str | None:
        if v is None:
            return None
        codes = v.upper()
        if len(codes) != 3 or not set(codes) <= set("LRAPSI") or len({_axis_of(c) for c in codes}) != 3:
            raise ValueError(f"orientation {v!r} must be three axis codes such as 'RAS' or 'LPS'")
        return codes

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        for t in (*self.inputs, *self.outputs):
            t.to_tensor_spec()
        _check_unique([t.name for t in self.inputs], "inputs")
        _check_unique([t.name for t in self.outputs], "outputs")
        _check_unique([str(label.value) for label in self.labels], "labels (values)")
        if self.task == "segmentation" and any(label.value == 0 for label in self.labels):
            raise ValueError("segmentation labels start at 1 (0 is background)")
        rank = len(self.inputs[0].shape) - 2
        for name, axes in (("spacing", self.spacing), ("roi_size", self.roi_size)):
            if axes is not None and len(axes) != rank:
                raise ValueError(f"{name} has {len(axes)} values; the input has {rank} spatial axes")
        return self

    def metadata(self) -> ModelMetadata:
        """The backend-level description of the network's tensors."""
        return ModelMetadata(
            name=self.name,
            version=self.version,
            inputs=tuple(t.to_tensor_spec() for t in self.inputs),
            outputs=tuple(t.to_tensor_spec() for t in self.outputs),
        )

    def label(self, value: int) -> LabelSpec | None:
        """The label with this value, if the spec names it."""
        return next((lab for lab in self.labels if lab.value == value), None)


def read_spec(path: Path) -> ModelSpec:
    """Read ``model.json``; :class:`ConfigError` naming the file when it is unreadable or invalid."""
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read model spec: {e}") from e
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid model spec: {_first_error(e)}") from e


def write_spec(spec: ModelSpec, path: Path) -> None:
    """Write ``spec`` as indented JSON."""
    path.write_text(json.dumps(spec.model_dump(mode="json", exclude_defaults=False), indent=2) + "\n")


def validate_spec(data: dict[str, object], where: str) -> ModelSpec:
    """Validate spec fields gathered from several places; :class:`ConfigError` names ``where``."""
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: invalid model spec: {_first_error(e)}") from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def _check_unique(names: list[str], field: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"{field} must be unique, got {names}")


def _axis_of(code: str) -> int:
    return {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}[code]
