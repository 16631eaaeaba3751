"""``pagewalk view`` (loaded lazily by pagewalk.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from pagewalk.cli_common import (
    OneLineUsageErrors,
    output_dir,
    reports_errors,
    resolve_scenario,
)
from pagewalk.errors import OutputError


@click.command("view", cls=OneLineUsageErrors)
@click.argument("scenario")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--static", "static_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the view's files into DIR instead of serving them "
                   "(open DIR/index.html in a browser).")
@click.option("--serve-seconds", type=click.FloatRange(min=0.1), default=None,
              help="Stop serving after this many seconds (default: until Ctrl-C).")
@reports_errors
def view_command(scenario: str, port: int, static_dir: Path | None,
                 serve_seconds: float | None) -> None:
    """Run SCENARIO (a YAML file or a built-in example name) and show it in a local web page:
    the steps, each process's VMAs and page-table tree, RSS/VmPTE/THP over the steps and the
    /proc views at each measure. Everything is served from 127.0.0.1; nothing is fetched
    from the network."""
    from pagewalk.scenario.schema import load_scenario
    from pagewalk.view.model import build_document
    from pagewalk.view.server import build_site, make_server, serve, write_static
    scen = load_scenario(resolve_scenario(scenario))
    if static_dir is not None:
        output_dir(static_dir)         # refused before the scenario runs
    document = build_document(scen)
    site = build_site(document)
    if static_dir is not None:
        try:
            write_static(site, static_dir)
        except OSError as err:
            raise OutputError.writing(static_dir, err) from None
        click.echo(f"wrote {len(site)} files; open {(static_dir / 'index.html').resolve()}")
        return
    server = make_server(site, port)
    click.echo(f"pagewalk view of {document['scenario']['name']}: {server.url}", )
    click.echo("press Ctrl-C to stop", err=True)
    serve(server, serve_seconds)
