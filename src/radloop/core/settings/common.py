"""What every settings section shares: strict models, AE title checks and the ``Secret`` type.

A :data:`Secret` is a :class:`~pydantic.SecretStr`: it prints and dumps as ``**********``, so
``radloop config show``, logs and tracebacks never show it. The one place that needs the real
value in a dump, the settings handed to worker processes, asks for it with the serialization
context :data:`REVEAL_SECRETS` (see :meth:`radloop.core.settings.Settings.to_worker_json`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

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


class KeyMarker:
    """Metadata that marks a :data:`Secret` as a *key radloop itself signs or hashes with*."""


Key = Annotated[SecretStr, PlainSerializer(_dump_secret, when_used="json"), KeyMarker()]
"""A key radloop signs or hashes with (``secret_key``, ``review.launch_key``, ``pseudonym_key``).

A :data:`Secret` (masked the same way) that production also checks for strength: see
:func:`key_weakness` and :func:`iter_keys`. Passwords and tokens of other systems are plain
:data:`Secret` values: radloop does not choose them.
"""

MIN_KEY_BYTES = 32
"""Shortest key accepted in production, in characters (bytes of ASCII)."""
MIN_KEY_BITS = 128.0
"""Least estimated entropy of a key in production (length × Shannon entropy per character)."""
MASK = "***"
"""What :func:`redacted` writes in place of a secret."""


def key_weakness(value: str, default: str = "") -> str | None:
    """Why ``value`` is not a strong key (empty, the default, too short, low-entropy), or None.

    Entropy is estimated as length × Shannon entropy of the characters: 32 random bytes as
    ``secrets.token_urlsafe(32)`` (≈ 215 bits) or ``token_hex(32)`` (≈ 250) pass; a word repeated
    to 32 characters does not.
    """
    if not value:
        return "it is empty"
    if default and value == default:
        return "it is the built-in development default"
    if len(value) < MIN_KEY_BYTES:
        return f"it is shorter than {MIN_KEY_BYTES} characters"
    counts = Counter(value)
    bits = len(value) * max(0.0, -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values()))
    if bits < MIN_KEY_BITS:
        return f"it is low-entropy (about {bits:.0f} bits; {MIN_KEY_BITS:.0f} needed)"
    return None


def iter_keys(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, SecretStr | None]]:
    """Every field of ``model`` (recursively) typed :data:`Key`, as (dotted path, value)."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if any(isinstance(m, KeyMarker) for m in info.metadata) or _is_key(info.annotation):
            yield path, value
        for i, item in _children(value):
            yield from iter_keys(item, f"{path}{i}.")


def _is_key(annotation: Any) -> bool:
    """Whether a type is :data:`Key`, or a union with it (``Key | None``)."""
    if get_origin(annotation) is Annotated:
        return any(isinstance(m, KeyMarker) for m in get_args(annotation)[1:])
    return any(_is_key(arg) for arg in get_args(annotation))


def _children(value: Any) -> Iterator[tuple[str, BaseModel]]:
    if isinstance(value, BaseModel):
        yield "", value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield f".{i}", item


def redacted(value: Any) -> Any:
    """``value`` as plain JSON-able data with every secret masked, found by type, not by name.

    A :class:`~pydantic.SecretStr` anywhere (fields, mapping values such as ``sources[].headers``,
    list items) becomes :data:`MASK`; a string that is a URL with a password
    (``postgresql://u:PASS@h/db``) keeps everything but the password.
    """
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        return {name: redacted(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redacted(v) for v in value]
    if isinstance(value, str):
        return mask_url_password(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_url_password(str(value))  # paths, enums


def mask_url_password(text: str) -> str:
    """``text`` with the password of a URL's user info replaced by :data:`MASK`; other text unchanged."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))


class StrictModel(BaseModel):
    """A settings section: an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")
