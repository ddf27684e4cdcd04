"""Reading what a model file says about itself, for ``radloop models add``.

Four kinds of source are accepted:

* **ONNX** (``*.onnx``): input and output names, dtypes and shapes come from the graph
  (symbolic dimensions become ``-1``).
* **TorchScript** (a ``torch.jit.save`` zip): the file records no names or shapes. Tensors are
  named as Triton's PyTorch backend expects (``input__0`` …, ``output__0``), the number of inputs
  is read from ``forward``, and shapes must be given in the spec (``--spec``) unless the network
  takes any 3-D image (then ``(-1, 1, -1, -1, -1)`` in, ``(-1, -1, -1, -1, -1)`` out is assumed).
* **MONAI bundle** (a folder with ``configs/metadata.json`` and ``models/model.ts``, or
  ``models/model.pt`` saved as TorchScript): tensors from ``network_data_format``; orientation,
  spacing, intensity window and sliding-window patch from the ``Orientationd``, ``Spacingd``,
  ``ScaleIntensityRanged``/``NormalizeIntensityd`` and ``SlidingWindowInferer`` entries of
  ``configs/inference.json`` when they hold literal values (expressions are skipped); label names
  from the output's ``channel_def``.

* **nnU-Net v2 trained-model folder** (``plans.json``, ``dataset.json``,
  ``fold_*/checkpoint_final.pth``): converted to TorchScript, spec from the plans
  (:mod:`radloop.inference.nnunet_import`).

Labels of a bundle get SNOMED CT codes from :data:`KNOWN_STRUCTURES` when the name is known,
else the generic "Tissue" type with a warning: give real codes in the spec's ``labels``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radloop.core.errors import ConfigError
from radloop.inference.model_spec import TISSUE, CodeSpec

if TYPE_CHECKING:
    from radloop.inference.store import ModelStore, StoredModel

logger = logging.getLogger(__name__)

KNOWN_STRUCTURES: dict[str, tuple[str, str]] = {
    "brain": ("12738006", "Brain"),
    "spleen": ("78961009", "Spleen"),
    "liver": ("10200004", "Liver"),
    "kidney": ("64033007", "Kidney"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "lung": ("39607008", "Lung"),
    "heart": ("80891009", "Heart"),
    "body": ("38266002", "Entire body"),
    "prostate": ("41216001", "Prostate"),
}
"""Lower-case structure name → SNOMED CT (code, meaning), for labels given by name only."""

_TORCH_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "float64": "float64",
    "int64": "int64",
    "int32": "int32",
    "uint8": "uint8",
}


def detect_source(path: Path) -> str:
    """``onnx``, ``torchscript``, ``monai_bundle`` or ``nnunet`` (an nnU-Net v2 trained-model folder,
    :mod:`radloop.inference.nnunet_import`); :class:`ConfigError` for anything else."""
    if path.is_dir():
        if (path / "configs" / "metadata.json").is_file():
            return "monai_bundle"
        if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
            return "nnunet"
        raise ConfigError(
            f"{path}: a folder must be a MONAI bundle (configs/metadata.json) or an nnU-Net v2 trained-model "
            "folder (plans.json, dataset.json, fold_*/checkpoint_final.pth)"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        return "torchscript"
    raise ConfigError(f"{path}: not an ONNX file (*.onnx), a TorchScript file or a MONAI bundle folder")


def onnx_fields(path: Path) -> dict[str, Any]:
    """Spec fields of an ONNX file: its graph inputs (initializers excluded) and outputs."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ConfigError(f"{path}: not a readable ONNX model: {e}") from e
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_onnx_tensor(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_onnx_tensor(v) for v in model.graph.output]
    return {"format": "onnx", "inputs": inputs, "outputs": outputs}


def _onnx_tensor(value: Any) -> dict[str, Any]:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    shape = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim
    ]
    return {"name": value.name, "dtype": dtype, "shape": shape or [-1]}


def torchscript_fields(path: Path) -> dict[str, Any]:
    """Spec fields of a TorchScript file: Triton-style names; 3-D image shapes as the default."""
    try:
        import torch

        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as e:
        raise ConfigError(f"{path}: not a loadable TorchScript file: {e}") from e
    arguments = [a for a in module.forward.schema.arguments if a.name != "self"]
    inputs = [
        {"name": f"input__{i}", "dtype": "float32", "shape": [-1, 1, -1, -1, -1]}
        for i in range(len(arguments))
    ]
    return {
        "format": "torchscript",
        "inputs": inputs,
        "outputs": [{"name": "output__0", "dtype": "float32", "shape": [-1, -1, -1, -1, -1]}],
    }


def bundle_network_file(bundle: Path) -> Path:
    """``models/model.ts``, else ``models/model.pt`` if it is TorchScript; :class:`ConfigError` if neither."""
    for candidate in (bundle / "models" / "model.ts", bundle / "models" / "model.pt"):
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            try:
                torchscript_fields(candidate)
            except ConfigError:
                continue
            return candidate
    raise ConfigError(
        f"{bundle}: no TorchScript network in models/ (model.ts, or model.pt saved with torch.jit.save); "
        "a bundle with only a state dict needs its network code: export it with `monai.bundle ckpt_export`"
    )


def bundle_fields(bundle: Path) -> dict[str, Any]:
    """Spec fields of a MONAI bundle (see the module docstring)."""
    metadata = read_json_object(bundle / "configs" / "metadata.json")
    fmt = metadata.get("network_data_format", {})
    inputs, outputs = fmt.get("inputs", {}), fmt.get("outputs", {})
    if not inputs or not outputs:
        raise ConfigError(f"{bundle}/configs/metadata.json: network_data_format needs inputs and outputs")
    (in_name, in_def), (out_name, out_def) = next(iter(inputs.items())), next(iter(outputs.items()))
    rank = len(in_def.get("spatial_shape") or [0, 0, 0])
    fields: dict[str, Any] = {
        "format": "torchscript",
        "description": str(metadata.get("description", "")),
        "inputs": [_bundle_tensor("input__0", in_def, rank)],
        "outputs": [_bundle_tensor("output__0", out_def, rank)],
        "labels": _bundle_labels(out_def.get("channel_def", {})),
    }
    inference = bundle / "configs" / "inference.json"
    if inference.is_file():
        fields |= _inference_fields(read_json_object(inference))
    logger.info("MONAI bundle %s: input %r, output %r", bundle, in_name, out_name)
    return fields


def _bundle_tensor(name: str, definition: dict[str, Any], rank: int) -> dict[str, Any]:
    channels = definition.get("num_channels")
    dtype = _TORCH_DTYPES.get(str(definition.get("dtype", "float32")).removeprefix("torch."), "float32")
    return {
        "name": name,
        "dtype": dtype,
        "shape": [-1, int(channels) if isinstance(channels, int) and channels > 0 else -1, *([-1] * rank)],
    }


def _bundle_labels(channel_def: dict[str, Any]) -> list[dict[str, Any]]:
    labels = []
    for key, name in sorted(channel_def.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        if not str(key).isdigit() or int(key) == 0 or str(name).lower() == "background":
            continue
        labels.append(
            {"value": int(key), "name": str(name)[:64], "type": structure_code(str(name)).model_dump()}
        )
    return labels


def structure_code(name: str) -> CodeSpec:
    """The SNOMED CT code of a known structure name, else "Tissue" (logged: give the real code)."""
    known = KNOWN_STRUCTURES.get(name.strip().lower())
    if known is None:
        logger.warning("label %r has no known SNOMED CT code: typed as 'Tissue'; set it in the spec", name)
        return TISSUE
    return CodeSpec(value=known[0], meaning=known[1])


def _inference_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Orientation, spacing, intensity and sliding-window patch from ``configs/inference.json``."""
    fields: dict[str, Any] = {}
    for transform in _transforms(config.get("preprocessing")):
        target = str(transform.get("_target_", "")).rsplit(".", 1)[-1]
        if target in ("Orientationd", "Orientation") and _literal(transform.get("axcodes")):
            fields["orientation"] = transform["axcodes"]
        elif target in ("Spacingd", "Spacing") and _literal(transform.get("pixdim")):
            fields["spacing"] = [float(v) for v in transform["pixdim"]]
        elif target in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            keys = ("a_min", "a_max", "b_min", "b_max", "clip")
            values = {k: transform[k] for k in keys if k in transform and _literal(transform[k])}
            fields["intensity"] = {"kind": "scale_range", **values}
        elif target in ("NormalizeIntensityd", "NormalizeIntensity"):
            fields["intensity"] = {"kind": "zscore", "nonzero": bool(transform.get("nonzero", False))}
    inferer = config.get("inferer")
    if isinstance(inferer, dict) and str(inferer.get("_target_", "")).endswith("SlidingWindowInferer"):
        if _literal(inferer.get("roi_size")):
            fields["roi_size"] = [int(v) for v in inferer["roi_size"]]
        if isinstance(inferer.get("sw_batch_size"), int):
            fields["sw_batch_size"] = inferer["sw_batch_size"]
        if isinstance(inferer.get("overlap"), int | float):
            fields["overlap"] = float(inferer["overlap"])
    return fields


def _transforms(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict) and isinstance(node.get("transforms"), list):
        return [t for t in node["transforms"] if isinstance(t, dict)]
    return []


def _literal(value: Any) -> bool:
    """True for a value written out in the config (not an ``@reference`` or ``$expression``)."""
    if isinstance(value, str):
        return not value.startswith(("@", "$", "%"))
    if isinstance(value, list):
        return all(_literal(v) for v in value)
    return isinstance(value, int | float | bool)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ConfigError naming the file if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    return data


PACKAGE_PROVENANCE_FILE = "provenance.json"
"""Where a model taken from a package records where it came from and under which licence."""


def import_taps(store: ModelStore, *, replace: bool = False) -> StoredModel:
    """Copy the TAPS network of the installed lavlab-taps wheel into ``store`` as ``taps_prostate``
    1.1.2, with its spec (patch, spacing, intensity, sigmoid threshold, SNOMED label) and a
    ``provenance.json`` naming the package, its version, file, licence (MIT) and checksum."""
    from radloop.inference.packaged import TAPS_DISTRIBUTION, TAPS_PROVENANCE, TAPS_VERSION, taps_packaged

    packaged = taps_packaged()
    if packaged is None:
        raise ConfigError(
            f"{TAPS_DISTRIBUTION} is not installed: "
            f"`pip install --no-deps {TAPS_DISTRIBUTION}=={TAPS_VERSION}` "
            "(without --no-deps pip also pulls onnxruntime-gpu)"
        )
    record = {**TAPS_PROVENANCE, "sha256": file_sha256(packaged.path)}
    files = {PACKAGE_PROVENANCE_FILE: json.dumps(record, indent=2) + "\n"}
    return store.add_packaged(packaged, replace=replace, files=files)


def read_package_provenance(stored: StoredModel) -> dict[str, Any] | None:
    """The ``provenance.json`` of a model imported from a package (None for other models)."""
    path = stored.folder / PACKAGE_PROVENANCE_FILE
    if not path.is_file():
        return None
    return read_json_object(path)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read a MiB at a time (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
