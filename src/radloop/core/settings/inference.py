"""The ``inference`` section of :class:`~radloop.core.settings.Settings`: where models live and
which backend runs each of them.

A pipeline file names *models* (``model: ct_organs``), never backends. Which backend runs a
model is configuration: ``inference.default`` applies to every model, ``inference.models``
overrides it per model name::

    inference:
      models_dir: /var/lib/radloop/models      # default: <data_dir>/models
      default: {backend: auto}                 # in process: ONNX Runtime or TorchScript by file
      models:
        deepbet_mask: {backend: triton, url: grpc://127.0.0.1:8001, timeout_s: 60, retries: 3}

The backend settings are a union told apart by ``backend`` (``auto`` when absent); each variant
holds only its own fields (a Triton URL on an in-process model is an error, not ignored).
:mod:`radloop.inference.registry` maps each variant's type to the function that builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, Tag, field_validator

from radloop.core.settings.common import StrictModel

TRITON_SCHEMES = ("http", "https", "grpc", "grpcs")
"""URL schemes of a Triton server: HTTP/REST (``http``, ``https``) or gRPC (``grpc``, ``grpcs``)."""


class AutoBackendSettings(StrictModel):
    """Run the model in this process with the runtime its file needs: ONNX Runtime for ``.onnx``,
    TorchScript for a TorchScript file or a MONAI bundle."""

    backend: Literal["auto"] = "auto"
    device: str = Field("cpu", description="torch device for in-process TorchScript models.")


class OnnxRuntimeBackendSettings(StrictModel):
    """Run the model in this process with ONNX Runtime; a model that is no ONNX file is refused."""

    backend: Literal["onnxruntime"] = "onnxruntime"


class TorchScriptBackendSettings(StrictModel):
    """Run the model in this process with TorchScript; a model that is no TorchScript file is refused."""

    backend: Literal["torchscript"] = "torchscript"
    device: str = Field("cpu", description="torch device for in-process TorchScript models.")


class TritonBackendSettings(StrictModel):
    """Send every call to the Triton server at ``url``."""

    backend: Literal["triton"] = "triton"
    url: str = Field(description="Triton server: http://host:8000 (REST) or grpc://host:8001 (gRPC).")
    model_name: str = Field(
        "", description="Name of the model on the Triton server; empty = the model's name."
    )
    model_version: str = Field("", description="Triton model version; empty = the server's choice (latest).")
    timeout_s: float = Field(120.0, gt=0, description="Longest wait for one inference call.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Longest wait to connect to the server.")
    retries: int = Field(
        3, ge=0, description="Further tries when the server is UNAVAILABLE (down, starting)."
    )
    retry_backoff_s: float = Field(0.5, gt=0, description="First wait between tries; doubles each time.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in TRITON_SCHEMES or not parts.hostname or parts.port is None:
            schemes = ", ".join(TRITON_SCHEMES)
            raise ValueError(
                f"backend triton needs url scheme://host:port with scheme one of {schemes}, got {url!r}"
            )
        return url


def _backend_of(value: Any) -> str:
    """The ``backend`` of a config (a mapping from the file, or a model); ``auto`` when absent."""
    if isinstance(value, dict):
        return str(value.get("backend", "auto"))
    return str(getattr(value, "backend", "auto"))


ModelBackendSettings = Annotated[
    Annotated[AutoBackendSettings, Tag("auto")]
    | Annotated[OnnxRuntimeBackendSettings, Tag("onnxruntime")]
    | Annotated[TorchScriptBackendSettings, Tag("torchscript")]
    | Annotated[TritonBackendSettings, Tag("triton")],
    Discriminator(_backend_of),
]
"""How one model is run: one of the backend variants above, told apart by ``backend``."""


class LocalTritonSettings(StrictModel):
    """``radloop triton serve``: the CPU Triton server that installs from PyPI (nvidia-pytriton)."""

    venv: Path | None = Field(
        None, description="Its own virtual environment; default: ~/.cache/radloop/triton-venv."
    )
    pip_args: list[str] = Field(
        default_factory=list,
        description="Extra pip arguments for building that environment (e.g. an index URL).",
    )
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    ready_timeout_s: float = Field(180.0, gt=0, description="Longest wait for the server to load its models.")


class InferenceSettings(StrictModel):
    """The model store and the backend of every model (see the module docstring)."""

    models_dir: Path | None = Field(
        None, description="The versioned model store; default: <data_dir>/models."
    )
    default: ModelBackendSettings = Field(default_factory=AutoBackendSettings)
    models: dict[str, ModelBackendSettings] = Field(
        default_factory=dict, description="Per model name: overrides ``default`` as a whole."
    )
    local_triton: LocalTritonSettings = Field(default_factory=LocalTritonSettings)

    def backend_for(self, model: str) -> ModelBackendSettings:
        """The backend settings of ``model``: its own entry, else ``default``."""
        return self.models.get(model, self.default)

    def store_dir(self, data_dir: Path) -> Path:
        """Where the model store is: ``models_dir``, else ``<data_dir>/models``."""
        return self.models_dir if self.models_dir is not None else data_dir / "models"
