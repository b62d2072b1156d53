"""The `recsys` command: a thin shell over library functions.

Each command reads its options into a config, makes one library call and prints a short summary.
Errors from the library (RecsysError) print as one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from recsys.errors import RecsysError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RecsysError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(debug: bool, verbose: bool) -> None:
    """recsys: personalised ranked lists with a text-aware LightGBM ranker."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


# --- data: ingest, synth, stats ---------------------------------------------------------------


# --- text model: train-encoder, encode ------------------------------------------------------------


# --- features -----------------------------------------------------------------------------------


# --- jobs: train, recommend, evaluate, export, demo ---------------------------------------------------


# --- benchmark --------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
