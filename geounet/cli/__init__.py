"""The ``geounet`` command: a thin click layer over the library functions.

Errors a user can cause (:class:`geounet.errors.GeoUNetError`, unreadable rasters) become one
line on stderr and exit status 1; anything else is reported as an internal error (traceback
with ``-v``). Subcommands live in one module each.
"""

from __future__ import annotations

import logging
import sys

import click
from rasterio.errors import RasterioError

from geounet import __version__
from geounet.errors import GeoUNetError

log = logging.getLogger("geounet")


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GeoUNetError, RasterioError) as exc:
            _fail(f"error: {exc}", exc)
        except KeyboardInterrupt:
            click.echo("geounet: interrupted; no output was left at the destination", err=True)
            sys.exit(130)
        except MemoryError as exc:
            _fail("error: out of memory; lower --batch-size or --block-tiles", exc)


def _fail(message: str, exc: BaseException) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.exception(message)
    click.echo(f"geounet: {message}", err=True)
    sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="geounet")
def main() -> None:
    """Segment large GeoTIFFs with a U-Net: streamed tiled inference, training, evaluation."""


def _register() -> None:
    from geounet.cli import (
        demo,
        evaluate,
        info,
        predict,
        preview,
        run,
        sample,
        schedule,
        train,
        vectorize,
    )

    for module in (predict, vectorize, train, evaluate, sample, demo, info, preview, run,
                   schedule):
        main.add_command(module.command)


_register()
