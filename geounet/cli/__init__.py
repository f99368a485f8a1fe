"""The ``geounet`` command: a thin click layer over the library functions.

Errors a user can cause (:class:`geounet.errors.GeoUNetError`, unreadable rasters, files the
system refuses) become one line on stderr and exit status 1; a bad command line is one line
and exit status 2; anything else is one line reported as an internal error (traceback with
``-v``). Subcommands live in one module each, imported only when that command runs (or
when the commands are listed): a command does not pay for the others' libraries.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

import click

from geounet import __version__
from geounet.errors import GeoUNetError

log = logging.getLogger("geounet")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every temporary is removed on the way
    out as it is for Ctrl-C."""


_signalled: list[type[KeyboardInterrupt]] = []   # the interrupts received, in order


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated`, SIGINT KeyboardInterrupt, and both are
    remembered: a library that turns the exception into its own error (GDAL reading a
    stream of batches reports "Error while accessing batch from stream") is still reported
    as the interrupt it was."""
    _signalled.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raiser(kind: type[KeyboardInterrupt]):
        def handle(signum: int, frame: object) -> None:
            _signalled.append(kind)
            raise kind

        return handle

    previous = {number: signal.signal(number, raiser(kind))
                for number, kind in ((signal.SIGTERM, Terminated),
                                     (signal.SIGINT, KeyboardInterrupt))}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# the subcommands, each the `command` of its module in geounet.cli
COMMANDS = ("predict", "vectorize", "train", "evaluate", "sample", "demo", "info", "preview",
            "run", "schedule", "export")


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = importlib.import_module(f"geounet.cli.{cmd_name}").command
        return command

    def invoke(self, ctx: click.Context):
        from rasterio.errors import RasterioError

        from geounet.geotiff import silence_libtiff_stderr
        from geounet.outputs import first_line

        silence_libtiff_stderr()  # a full disk is our one line, not one raw line per block
        try:
            with _terminate_as_interrupt():
                try:
                    return super().invoke(ctx)
                except Exception as exc:
                    if _signalled:   # the interrupt, reported by a library as its error
                        raise _signalled[0]() from exc
                    raise
        except GeoUNetError as exc:
            _fail(f"error: {exc}", exc)
        except RasterioError as exc:
            _fail(f"error: {_gdal_words(exc)}", exc)
        except KeyboardInterrupt as exc:
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            if ctx.invoked_subcommand == "train":   # finished epochs' checkpoints are complete
                said = ("no partial checkpoint was left; those of finished epochs are kept: "
                        "continue with --resume")
            else:
                said = "no output was left at the destination"
            click.echo(f"geounet: {how}; {said}", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except MemoryError as exc:
            _fail(f"error: out of memory in `geounet {ctx.invoked_subcommand}`; lower "
                  "--batch-size or --block-tiles, or process a smaller raster", exc)
        except click.UsageError as exc:  # one line instead of click's usage block
            command = exc.ctx.command_path if exc.ctx else "geounet"
            _fail(f"error: {exc.format_message()} (see `{command} --help`)", exc, exc.exit_code)
        except click.ClickException as exc:
            _fail(f"error: {exc.format_message()}", exc, exc.exit_code)
        except OSError as exc:  # the system refused a file: name it and say why
            cause = f"{exc.filename}: {exc.strerror}" if exc.filename else first_line(exc)
            _fail(f"error: {cause}", exc)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: one line, the traceback with -v
            _fail(f"internal error: {type(exc).__name__}: {first_line(exc)}; rerun with -v "
                  "for the traceback and report it", exc, level=logging.INFO)


def _gdal_words(exc: BaseException) -> str:
    """GDAL's messages behind a rasterio error, outermost (it names the file) to innermost."""
    from geounet.outputs import exception_chain
    said = []
    for cause in exception_chain(exc):
        text = " ".join(str(cause).split())
        if text and "see previous exception" not in text.lower() and text not in said:
            said.append(text)
    if not said:
        return "GDAL could not read or write a raster"
    return said[0] + (f" ({said[-1]})" if len(said) > 1 else "")


def _fail(message: str, exc: BaseException, status: int = 1,
          level: int = logging.DEBUG) -> None:
    if log.isEnabledFor(level):
        log.error(message, exc_info=exc)
    click.echo(f"geounet: {message}", err=True)
    sys.exit(status)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="geounet")
def main() -> None:
    """Segment large GeoTIFFs with a U-Net: streamed tiled inference, training, evaluation."""


def entry() -> None:
    """The ``geounet`` program: :func:`main`, then, once the exit handlers have run and the
    output is flushed, an exit that skips freeing every object of every library one by one
    (a third of a second with geopandas and SciPy loaded). :func:`main` itself, as tests
    and other programs call it, exits as usual. ``geounet vectorize ... --centerlines``
    starts the skeleton helper process first thing (:mod:`geounet.processes`; this module
    loads nothing heavy before), so that its libraries load beside this process's."""
    arguments = sys.argv[1:]
    if (arguments[:1] == ["vectorize"] and not {"--help", "-h"} & set(arguments)
            and any(a == "--centerlines" or a.startswith("--centerlines=")
                    for a in arguments)):
        from geounet.processes import start_skeleton_helper

        start_skeleton_helper()
    try:
        main()
        status: int | str | None = 0
    except SystemExit as exc:
        status = exc.code
    if isinstance(status, str):   # sys.exit("message"), as Python prints it
        print(status, file=sys.stderr)
        status = 1
    status = 0 if status is None else status
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:   # not CPython: the usual exit
        sys.exit(status)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):   # a closed pipe (geounet ... | head)
            stream.flush()
    os._exit(status)

