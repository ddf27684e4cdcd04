"""``create_app(runtime)``: the FastAPI app of radloop (no module-level app or state).

Routes: ``/health`` (anonymous), ``/metrics`` (Prometheus), ``/api/v1/...`` (REST API) and
``/dicomweb/...`` (STOW-RS, QIDO-RS, WADO-RS). Everything but ``/health`` needs an API token
(``Authorization: Bearer <token>``).
"""

from __future__ import annotations

from fastapi import FastAPI

from radloop import __version__
from radloop.api import middleware, oidc, problems
from radloop.api.routes import dicomweb, exports, health, jobs, pipelines, pulls, reviews, studies, workitems
from radloop.console import routes as console
from radloop.core.settings import Settings
from radloop.runtime import Runtime
from radloop.viewer_launch import routes as review

DESCRIPTION = """Medical-imaging AI in the clinical loop.

Machine access only, by API token: `radloop tokens create NAME` prints one; send it as
`Authorization: Bearer <token>`. `/health` needs no token. Errors are problem details
(RFC 9457). DICOMweb (STOW-RS, QIDO-RS, WADO-RS) lives under `/dicomweb`.
"""


def create_app(source: Runtime | Settings) -> FastAPI:
    """The app over ``source``: a server's :class:`Runtime`, or settings to build one from (migrated)."""
    runtime = source if isinstance(source, Runtime) else Runtime.build(source, migrate=True)
    settings = runtime.settings
    public = settings.api.public_docs
    app = FastAPI(
        title="radloop",
        version=__version__,
        description=DESCRIPTION,
        redoc_url=None,
        openapi_url="/openapi.json" if public else None,
        docs_url="/docs" if public else None,
    )
    app.state.radloop = runtime.preload()
    problems.install(app)
    middleware.install(app, settings.api)
    routers = [health.router, studies.router, jobs.router, pipelines.router, pulls.router, dicomweb.router]
    # review app: signed launch URLs, then cookie sessions
    routers += [reviews.router, review.router]
    routers.append(exports.router)  # training datasets from reviewed results
    routers.append(workitems.router)  # UPS-RS AI worklist (IHE AIW-I Task Manager)
    routers += [oidc.router, oidc.logout_router]  # sign-on for people (oidc.issuer), sign-out
    routers += [console.router, console.review_bridge]  # the operator console (/console)
    if not public:
        routers.append(health.docs_router)
    for router in routers:
        app.include_router(router)
    return app
