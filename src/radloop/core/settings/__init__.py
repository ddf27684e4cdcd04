"""radloop's settings: one typed :class:`Settings` object, nested by subsystem.

One module per section of the config file; import any name from here
(``from radloop.core.settings import Settings, load_settings, DicomDestination``):

* :mod:`~radloop.core.settings.root`: :class:`Settings`, :func:`load_settings`, ``database``
* :mod:`~radloop.core.settings.dicom`: the SCP, its listeners and DICOM TLS (``dicom``)
* :mod:`~radloop.core.settings.destinations`: where results go (``destinations``, ``outbox``)
* :mod:`~radloop.core.settings.sources`: PACSs studies are pulled from (``sources``)
* :mod:`~radloop.core.settings.pipelines`: pipeline files and job workers (``pipelines``, ``workers``)
* :mod:`~radloop.core.settings.inference`: model store and backends (``inference``)
* :mod:`~radloop.core.settings.api`: the HTTP server (``api``)
* :mod:`~radloop.core.settings.review`: launch URLs and the review app (``review``)
* :mod:`~radloop.core.settings.oidc`: sign-on for people (``oidc``)
* :mod:`~radloop.core.settings.xnat`: XNAT destinations, watcher and command (``xnat``)
* :mod:`~radloop.core.settings.audit`: the ATNA audit trail and its syslog repository (``audit``)
* :mod:`~radloop.core.settings.export`: training dataset export (``training_export``)
* :mod:`~radloop.core.settings.common`: the shared ``Secret`` type and AE title check
"""

from radloop.core.settings.api import ApiSettings
from radloop.core.settings.audit import AuditRepository, AuditSettings
from radloop.core.settings.common import (
    REVEAL_SECRETS,
    Key,
    Secret,
    StrictModel,
    check_ae_title,
    key_weakness,
    mask_url_password,
    redacted,
)
from radloop.core.settings.destinations import (
    Destination,
    DestinationSettings,
    DicomDestination,
    DicomwebDestination,
    FolderDestination,
    OutboxSettings,
    XnatDestination,
)
from radloop.core.settings.dicom import (
    TLS_CIPHERS,
    AllowedCaller,
    CommitmentPeer,
    DicomSettings,
    DicomTlsClient,
    DicomTlsSettings,
    ListenerSettings,
    TlsMode,
)
from radloop.core.settings.export import TrainingExportSettings
from radloop.core.settings.inference import (
    TRITON_SCHEMES,
    AutoBackendSettings,
    InferenceSettings,
    LocalTritonSettings,
    ModelBackendSettings,
    OnnxRuntimeBackendSettings,
    TorchScriptBackendSettings,
    TritonBackendSettings,
)
from radloop.core.settings.oidc import OidcSettings
from radloop.core.settings.pipelines import PipelineSettings, WorkerSettings
from radloop.core.settings.review import MIN_KEY_LENGTH, ReviewSettings
from radloop.core.settings.root import DEV_SECRET, DatabaseSettings, Settings, load_settings
from radloop.core.settings.sources import DicomwebSource, DimseSource, PollSettings, PullSource
from radloop.core.settings.xnat import (
    DEFAULT_IMAGE,
    LabelSource,
    LookupKey,
    XnatCommandSettings,
    XnatServerFields,
    XnatSettings,
    XnatWatchSettings,
)

__all__ = [
    "DEFAULT_IMAGE",
    "DEV_SECRET",
    "MIN_KEY_LENGTH",
    "REVEAL_SECRETS",
    "TLS_CIPHERS",
    "TRITON_SCHEMES",
    "AllowedCaller",
    "CommitmentPeer",
    "ApiSettings",
    "AuditRepository",
    "AuditSettings",
    "AutoBackendSettings",
    "DatabaseSettings",
    "Destination",
    "DestinationSettings",
    "DicomDestination",
    "DicomSettings",
    "DicomTlsClient",
    "DicomTlsSettings",
    "DicomwebDestination",
    "DicomwebSource",
    "DimseSource",
    "FolderDestination",
    "InferenceSettings",
    "Key",
    "LabelSource",
    "ListenerSettings",
    "LocalTritonSettings",
    "LookupKey",
    "ModelBackendSettings",
    "OidcSettings",
    "OnnxRuntimeBackendSettings",
    "OutboxSettings",
    "PipelineSettings",
    "PollSettings",
    "PullSource",
    "ReviewSettings",
    "Secret",
    "Settings",
    "StrictModel",
    "TlsMode",
    "TorchScriptBackendSettings",
    "TrainingExportSettings",
    "TritonBackendSettings",
    "WorkerSettings",
    "XnatCommandSettings",
    "XnatDestination",
    "XnatServerFields",
    "XnatSettings",
    "XnatWatchSettings",
    "check_ae_title",
    "key_weakness",
    "load_settings",
    "mask_url_password",
    "redacted",
]
