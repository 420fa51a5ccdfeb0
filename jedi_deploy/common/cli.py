"""What every jedi-deploy command line shares: typed errors become ``error: <message>`` and a
non-zero exit (never a traceback), Ctrl-C is exit 130, and progress bars only on a terminal.
Torch-free (``python -m jedi_deploy.serve.*`` uses it)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from jedi_deploy.contracts.errors import JediError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _invoke_cleanly(invoke, ctx):
    try:
        return invoke(ctx)
    except JediError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


class JediGroup(click.Group):
    """A command group whose commands turn :class:`JediError` into a one-line error."""

    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)


class JediCommand(click.Command):
    """A stand-alone command (``python -m ...``) with the same error handling as the group."""

    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)


def progress() -> bool:
    """Show progress bars only when stderr is a terminal."""
    return sys.stderr.isatty()


#: A path argument that must exist, handed over as a Path.
EXISTING = click.Path(exists=True, path_type=Path)
