"""``radloop send``: DICOM files to a peer by C-STORE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radloop.cli.output import console, err_console
from radloop.core.errors import RadloopError


def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.dcm, .dcm.gz, any DICOM file).")],
    host: Annotated[str, typer.Option(help="Peer host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Peer port.")] = 11112,
    called_ae: Annotated[str, typer.Option("--called-ae", help="Peer's AE title.")] = "RADLOOP",
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title.")] = "RADLOOP_SEND",
    associations: Annotated[
        int,
        typer.Option(
            "--associations", min=1, max=32, help="Parallel associations (fewer if the peer refuses some)."
        ),
    ] = 1,
    tls: Annotated[
        bool, typer.Option("--tls", help="DICOM TLS (TLS 1.2+, peer certificate verified).")
    ] = False,
    tls_ca: Annotated[
        Path | None, typer.Option("--tls-ca", help="CA certificates (PEM) the peer's must chain to.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Our client certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key (PEM).")] = None,
    tls_server_name: Annotated[
        str, typer.Option("--tls-server-name", help="Name the peer's certificate must carry; default: host.")
    ] = "",
) -> None:
    """Send DICOM files to a peer by C-STORE, with a progress bar; ``--tls*`` for DICOM TLS."""
    from radloop.connector.dimse.scu import iter_dicom_files, send_files
    from radloop.connector.dimse.tls import tls_args
    from radloop.core.settings import DicomTlsClient

    secure = None
    if tls or tls_ca or tls_cert or tls_key:
        try:
            client = DicomTlsClient(
                ca_certificates=tls_ca, certificate=tls_cert, private_key=tls_key, server_name=tls_server_name
            )
        except ValueError as e:  # pydantic's ValidationError: --tls-cert without --tls-key
            raise RadloopError(f"--tls-cert and --tls-key go together: {e}") from e
        secure = tls_args(client, host, "--tls")
    files = iter_dicom_files(paths)
    if not files:
        raise RadloopError("no files to send")
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task("send", total=len(files))
        report = send_files(
            files,
            host,
            port,
            called_ae,
            calling_ae,
            on_progress=lambda _p, _ok: progress.advance(task),
            associations=associations,
            tls_args=secure,
        )
    for path, why in report.failed:
        console.print(f"[red]failed[/red] {path}: {why}")
    console.print(f"{len(report.sent)} sent, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)
