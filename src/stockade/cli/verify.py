"""`stockade verify`: prove from inside each running server's sandbox that every policy holds.

Mounted by the CLI's main module as `app.command("verify")(verify_command)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def verify_command(
    server: Annotated[str | None, typer.Option("--server", help="Verify only this server (slug).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write a JUnit XML report to FILE.")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report to FILE.")] = None,
    compare: Annotated[str | None, typer.Option(
        "--compare", metavar="IMAGE_OR_ENTRY",
        help="Deploy this catalog entry as none, egress and open (temporary), compare reachability, remove them.",
    )] = None,
) -> None:
    """Prove from inside each running server's sandbox that isolation, hardening and secrets policies hold.

    Exit status 1 when any check fails. Results are written to <data_dir>/verify/latest.json.
    """
    from stockade.cli.output import console, errors
    from stockade.config import load_settings
    from stockade.errors import StockadeError
    from stockade.verify.render import html_report, junit_xml, print_table
    from stockade.verify.runner import run_verify

    try:
        settings = load_settings()
    except StockadeError as exc:
        errors.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None

    def progress(message: str) -> None:
        if not as_json:
            errors.print(f"[dim]•[/dim] {message}", highlight=False)

    document = run_verify(settings, server=server, compare=compare, progress=progress)
    if junit is not None:
        junit.write_text(junit_xml(document))
    if html_file is not None:
        html_file.write_text(html_report(document))
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print_table(document, console)
    raise typer.Exit(document["exit_status"])
