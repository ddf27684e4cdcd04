"""What every settings section shares: strict models, AE title checks and the ``Secret`` type.

A :data:`Secret` is a :class:`~pydantic.SecretStr`: it prints and dumps as ``**********``, so
``radloop config show``, logs and tracebacks never show it. The one place that needs the real
value in a dump, the settings handed to worker processes, asks for it with the serialization
context :data:`REVEAL_SECRETS` (see :meth:`radloop.core.settings.Settings.to_worker_json`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer, SecretStr, SerializationInfo

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")

REVEAL_SECRETS = "reveal_secrets"
"""Key of the serialization context that makes a JSON dump carry secrets' real values."""


def check_ae_title(value: str) -> str:
    """``value`` stripped; :class:`ValueError` unless it is 1-16 characters an AE title may hold."""
    title = value.strip()
    if not 1 <= len(title) <= 16 or not set(title) <= _AE_CHARS:
        raise ValueError(f"AE title {value!r} must be 1-16 characters of letters, digits, space, _ - .")
    return title


def _dump_secret(value: SecretStr, info: SerializationInfo) -> str:
    context = info.context
    if isinstance(context, dict) and context.get(REVEAL_SECRETS):
        return value.get_secret_value()
    return str(value)


Secret = Annotated[SecretStr, PlainSerializer(_dump_secret, when_used="json")]
"""A secret setting: masked when printed or dumped, unless the dump asks for :data:`REVEAL_SECRETS`."""


class StrictModel(BaseModel):
    """A settings section: an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")
