"""The versioned model store: a folder per model, a folder per version, a spec file in each.

Layout (``inference.models_dir``, default ``<data_dir>/models``)::

    <store>/<name>/<version>/model.json     the spec (radloop.inference.model_spec)
    <store>/<name>/<version>/model.onnx     or model.ts: the network, copied in
    <store>/<name>/<version>/bundle/        a MONAI bundle's configs/ and docs/, for reference
    <store>/<name>/<version>/training.json  a fine-tuned version's provenance (radloop.training)
    <store>/<name>/stages.json              which version is production / shadow / retired
    <store>/<name>/evaluations/*.json       ``radloop models compare`` results (promotion evidence)

A version is written into a hidden temporary folder and renamed into place, so a reader never
sees half a model, and a version once added is never changed (add a new version instead, or
``replace=True`` to overwrite deliberately). No database table: the folder is the truth.
Pipelines use the ``production`` version (:mod:`radloop.inference.stages`), else the newest.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radloop.core.errors import ConfigError, ModelNotFoundError
from radloop.inference import model_import
from radloop.inference.model_spec import SPEC_FILE, ModelSpec, read_spec, validate_spec, write_spec
from radloop.inference.packaged import TAPS_MODEL, PackagedModel, packaged_models, taps_packaged
from radloop.inference.stages import ModelStages, Stage, read_stages, write_stages

logger = logging.getLogger(__name__)

_FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts"}


@dataclass(frozen=True)
class StoredModel:
    """One model version: its spec and the absolute path of its network file."""

    spec: ModelSpec
    path: Path

    @property
    def folder(self) -> Path:
        """The version folder (or the package folder of a packaged model)."""
        return self.path.parent


class ModelStore:
    """The model store rooted at ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def add(
        self,
        source: Path,
        name: str,
        version: str,
        overrides: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> StoredModel:
        """Import an ONNX file, TorchScript file or MONAI bundle folder as ``name``/``version``.

        ``overrides`` are spec fields (e.g. from ``--spec``) that win over what the source says.
        """
        source = Path(source)
        kind = model_import.detect_source(source)
        if kind == "nnunet":
            return self._add_nnunet(source, name, version, overrides, replace)
        fields = _source_fields(source, kind)
        fields |= dict(overrides or {})
        fields |= {"name": name, "version": version, "source": kind}
        fields["file"] = _FILE_NAMES[str(fields["format"])]
        network = model_import.bundle_network_file(source) if kind == "monai_bundle" else source
        fields["sha256"] = model_import.file_sha256(network)
        spec = validate_spec(fields, f"{source} as {name}/{version}")
        return self._write(spec, network, source if kind == "monai_bundle" else None, replace)

    def _add_nnunet(
        self, folder: Path, name: str, version: str, overrides: Mapping[str, Any] | None, replace: bool
    ) -> StoredModel:
        """An nnU-Net v2 trained-model folder, converted to TorchScript, with its plans kept beside it."""
        from radloop.inference.nnunet_import import nnunet_fields

        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".nnunet-{uuid.uuid4().hex[:8]}"
        try:
            network = scratch / _FILE_NAMES["torchscript"]
            fields, files = nnunet_fields(folder, network)
            fields |= dict(overrides or {})
            fields |= {"name": name, "version": version, "source": "nnunet", "file": network.name}
            fields["sha256"] = model_import.file_sha256(network)
            spec = validate_spec(fields, f"{folder} as {name}/{version}")
            return self._write(spec, network, None, replace, files)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def add_packaged(
        self, packaged: PackagedModel, *, replace: bool = False, files: Mapping[str, str] | None = None
    ) -> StoredModel:
        """Copy a model shipped in a package (deepbet, TAPS) into the store, spec included, with
        extra text ``files`` (e.g. its provenance and licence)."""
        spec = packaged.spec.model_copy(update={"sha256": model_import.file_sha256(packaged.path)})
        return self._write(spec, packaged.path, None, replace, files)

    def add_trained(self, spec: ModelSpec, network: Path, files: Mapping[str, str]) -> StoredModel:
        """Add a fine-tuned network as a new version, with extra text ``files`` (its provenance)."""
        spec = spec.model_copy(update={"sha256": model_import.file_sha256(network)})
        return self._write(spec, network, None, False, files)

    def _write(
        self,
        spec: ModelSpec,
        network: Path,
        bundle: Path | None,
        replace: bool,
        files: Mapping[str, str] | None = None,
    ) -> StoredModel:
        target = self.root / spec.name / spec.version
        if target.exists() and not replace:
            raise ConfigError(
                f"model {spec.name} version {spec.version} is already in the store ({target}); "
                "versions are immutable: add a new version"
            )
        staging = self.root / spec.name / f".tmp-{spec.version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            shutil.copyfile(network, staging / spec.file)
            if bundle is not None:
                shutil.copytree(bundle / "configs", staging / "bundle" / "configs")
            write_spec(spec, staging / SPEC_FILE)
            for file_name, text in (files or {}).items():
                (staging / file_name).write_text(text)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("model %s version %s added to %s", spec.name, spec.version, target)
        return StoredModel(spec, target / spec.file)

    def names(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """The versions of ``name``, oldest first (by natural order: ``2`` before ``10``)."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / SPEC_FILE).is_file() and not p.name.startswith(".")]
        return sorted(found, key=version_key)

    def get(self, name: str, version: str | None = None) -> StoredModel:
        """One version of ``name`` (the newest if ``version`` is None); :class:`ModelNotFoundError`."""
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            raise ModelNotFoundError(not_found_message(name, self.root, version, versions))
        chosen = version or versions[-1]
        spec = read_spec(self.root / name / chosen / SPEC_FILE)
        return StoredModel(spec, self.root / name / chosen / spec.file)

    def all(self) -> list[StoredModel]:
        """Every version of every model."""
        return [self.get(name, v) for name in self.names() for v in self.versions(name)]

    def find(self, name: str) -> StoredModel | None:
        """The version pipelines use (production, else the newest) of ``name`` in the store, else
        the packaged model of that name, else None."""
        if self.versions(name):
            return self.get(name, self.serving_version(name))
        packaged = packaged_models().get(name)
        if packaged is None and name == TAPS_MODEL:
            packaged = taps_packaged()
        return None if packaged is None else StoredModel(packaged.spec, packaged.path)

    def stages(self, name: str) -> ModelStages:
        """The stages of ``name``'s versions."""
        return read_stages(self.root / name)

    def serving_version(self, name: str) -> str | None:
        """The version pipelines use: production if one is staged, else the newest (None: no version)."""
        versions = self.versions(name)
        production = self.stages(name).production
        if production is not None and production in versions:
            return production
        return versions[-1] if versions else None

    def shadow_versions(self, name: str) -> list[str]:
        """The versions staged ``shadow`` that are still in the store."""
        versions = self.versions(name)
        return [v for v in self.stages(name).shadow if v in versions]

    def set_stage(self, name: str, version: str, stage: Stage, actor: str) -> ModelStages:
        """Move ``version`` of ``name`` to ``stage``; :class:`ModelNotFoundError` if it is not stored."""
        self.get(name, version)
        stages = self.stages(name).with_stage(version, stage, actor)
        write_stages(self.root / name, stages)
        logger.info("model %s version %s is now %s (%s)", name, version, stage.value, actor)
        return stages

    def rollback(self, name: str, actor: str) -> tuple[str, ModelStages]:
        """Make the previous production version production again; returns it and the new stages."""
        previous = self.stages(name).previous_production()
        if previous is None or previous not in self.versions(name):
            raise ConfigError(f"model {name!r} has no earlier production version to roll back to")
        return previous, self.set_stage(name, previous, Stage.production, actor)


def not_found_message(name: str, root: Path, version: str | None, versions: list[str]) -> str:
    """The message of a missing model: where we looked and the command that adds it."""
    what = f"model {name!r}" + (f" version {version!r}" if version else "")
    have = f" (it has versions {versions})" if versions else ""
    return (
        f"{what} is not in the model store at {root}{have}; add it with "
        f"`radloop models add PATH --name {name} --version VERSION`"
    )


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: numeric parts compare as numbers (``1.10`` after ``1.9``)."""
    parts = version.replace("-", ".").replace("+", ".").replace("_", ".").split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _source_fields(source: Path, kind: str) -> dict[str, Any]:
    if kind == "onnx":
        return model_import.onnx_fields(source)
    if kind == "torchscript":
        return model_import.torchscript_fields(source)
    return model_import.bundle_fields(source)
