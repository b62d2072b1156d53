"""The CLI's error contract: every failure a user can cause ends in one ``error: ...`` line and exit status 1.

Library errors (:class:`RecsysError`, e.g. a :class:`DataError` naming file, row and field) and click's own
(a bad or missing option, which names the option) are printed on one line; ``--debug`` shows the traceback.
Nothing else is caught: any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from recsys.errors import RecsysError


class OneLineErrors(click.Group):
    """A click group whose user errors print as one line and exit 1 (the root group of ``recsys``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _fail(ctx, exc)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (RecsysError, click.ClickException) as exc:
            _fail(ctx, exc)


def _fail(ctx: click.Context, exc: Exception) -> NoReturn:
    if ctx.params.get("debug") or isinstance(exc, click.exceptions.NoArgsIsHelpError):
        raise exc
    message = str(exc) if isinstance(exc, RecsysError) else " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def given_flags(*names: str) -> list[str]:
    """The options among ``names`` (parameter names) that the command line set, as flags: a command names those
    that do not apply to the mode asked for in a usage error, rather than ignoring them."""
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    return [params[n].opts[0] for n in names if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT]
