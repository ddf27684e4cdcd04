"""The HTTP API: ``create_app(settings)`` builds the FastAPI app (REST API, DICOMweb, metrics)."""

from radloop.api.app import create_app

__all__ = ["create_app"]
