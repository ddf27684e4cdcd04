"""Roles: what a person or a machine may do through the HTTP API and the review app.

=============  =================================================================
role           may
=============  =================================================================
viewer         read studies, series, jobs, results, pipelines, models, metrics
radiologist    viewer + review: accept, reject, edit AI results
data-steward   viewer + training exports
operator       viewer + retry/cancel jobs and deliveries, pull, STOW-RS, review links
admin          everything (tokens, settings)
=============  =================================================================

Every role but ``admin`` includes ``viewer`` and nothing else; ``admin`` includes every role.
API tokens carry roles chosen when they are made (``radloop tokens create NAME --role …``);
a review session opened by a signed PACS link is a ``radiologist`` session.

Each route declares the role it needs with a dependency that is a :class:`RoleRequirement`
(``radloop.api.auth.require``, the review app's session requirements), so a test can walk the
app and find a route that declares none.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from radloop.core.errors import RadloopError


class Role(StrEnum):
    """A role; see the module's table."""

    viewer = "viewer"
    radiologist = "radiologist"
    data_steward = "data-steward"
    operator = "operator"
    admin = "admin"


DEFAULT_TOKEN_ROLES: tuple[Role, ...] = (Role.viewer,)
"""Roles of a token made without ``--role``: read-only (least privilege)."""


class PermissionDeniedError(RadloopError):
    """An authenticated caller lacks the role a route needs (403)."""


class UnknownRoleError(RadloopError, ValueError):
    """A role name that is not one of :class:`Role`."""


def parse_roles(values: Iterable[str]) -> tuple[Role, ...]:
    """Roles from their names (:class:`UnknownRoleError` naming an unknown one), duplicates dropped."""
    out: list[Role] = []
    for value in values:
        for name in value.replace(",", " ").split():
            try:
                role = Role(name.strip().lower())
            except ValueError:
                known = ", ".join(r.value for r in Role)
                raise UnknownRoleError(f"unknown role {name!r} (roles: {known})") from None
            if role not in out:
                out.append(role)
    return tuple(out)


def grants(held: Iterable[str], needed: Role) -> bool:
    """Whether holding the roles ``held`` allows what ``needed`` allows."""
    names = set(held)
    return Role.admin in names or needed in names or (needed is Role.viewer and bool(names))


class RoleRequirement:
    """Base of the dependencies that declare a route's role (``role`` None = public by design)."""

    role: Role | None = None

    def check(self, held: Iterable[str], who: str) -> None:
        """Raise :class:`PermissionDeniedError` unless ``held`` grants :attr:`role`."""
        if self.role is not None and not grants(held, self.role):
            raise PermissionDeniedError(f"{who} lacks the role {self.role.value!r} this needs")


class Public(RoleRequirement):
    """Dependency that declares a route public on purpose (``/health``, the signed review launch)."""

    role = None

    def __call__(self) -> None:
        return None
