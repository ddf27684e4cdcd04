"""Bodies of the REST API that are no read model: the error body and request bodies.

What the API answers with are the read models of :mod:`radloop.core.read_models`, which the
services return and the routes pass on unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="ignore")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""


class PullRequest(BaseModel):
    """Which study to pull: give ``accession_number`` or ``study_instance_uid``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=128)
    accession_number: str = Field("", max_length=64)
    study_instance_uid: str = Field("", max_length=64, pattern=r"^([0-9.]*)$")

    @model_validator(mode="after")
    def _one_key(self) -> PullRequest:
        if not self.accession_number and not self.study_instance_uid:
            raise ValueError("give accession_number or study_instance_uid")
        return self
