"""``radloop review-url``: signed launch URLs for the review app."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.core.errors import RadloopError


def review_url(
    study: Annotated[
        str | None,
        typer.Argument(
            help="StudyInstanceUID or AccessionNumber of the study to review; omit for a worklist link."
        ),
    ] = None,
    reviewer: Annotated[str, typer.Option(help="Who reviews (the PACS user ID).")] = "",
    result: Annotated[
        str,
        typer.Option(
            help="SeriesInstanceUID or SOPInstanceUID of the SEG; default: the study's newest AI SEG."
        ),
    ] = "",
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds the link stays valid (default: review.link_ttl_s).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a signed, expiring launch URL for the review app (what a PACS launch button opens)."""
    from radloop.core.refs import is_valid_uid
    from radloop.viewer_launch.signing import launch_url

    if not reviewer.strip():
        raise RadloopError("--reviewer is required: the launch URL names who reviews")
    settings = options.settings(config)
    named = study or ""
    by_uid = is_valid_uid(named)
    url = launch_url(
        settings,
        reviewer=reviewer.strip(),
        study=named if by_uid else "",
        accession="" if by_uid else named,
        result=result,
        ttl_s=ttl if ttl is not None else settings.review.link_ttl_s,
    )
    sys.stdout.write(url + "\n")
