"""Options shared by several subcommands."""

from __future__ import annotations

import logging
import os
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from geounet.errors import GeoUNetError
from geounet.inputs import require_regular_file


def verbosity(func: Callable) -> Callable:
    """Add ``-q/--quiet`` and ``-v/--verbose`` and configure logging from them."""

    def configure(ctx: click.Context, param: click.Parameter, value: object) -> object:
        ctx.ensure_object(dict)
        ctx.obj[param.name] = value
        quiet, verbose = ctx.obj.get("quiet", False), ctx.obj.get("verbose", 0)
        level = logging.WARNING if quiet or not verbose else (
            logging.INFO if verbose == 1 else logging.DEBUG)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                            force=True)
        # GDAL's warnings (e.g. on odd TIFF tags) only with -v: errors are one line.
        logging.getLogger("rasterio").setLevel(logging.CRITICAL if level >= logging.WARNING
                                               else logging.NOTSET)
        # So are rasterio's Python warnings, e.g. that a plain PNG/JPEG has no geotransform
        # (its outputs are on its pixel grid, which is what a user of plain images expects).
        warnings.filterwarnings("ignore" if level >= logging.WARNING else "default",
                                module=r"rasterio(\..*)?$")
        return value

    func = click.option("-q", "--quiet", is_flag=True, callback=configure, expose_value=True,
                        help="No progress bar or summary.")(func)
    func = click.option("-v", "--verbose", count=True, callback=configure, expose_value=True,
                        help="More detail (-vv for debug and tracebacks).")(func)
    return func


def parse_bands(ctx: click.Context, param: click.Parameter, value: str | None,
                ) -> tuple[int, ...] | None:
    """Parse ``--bands 1,2,3`` into 1-based band indexes."""
    return _parse_ids(value, 1, "1-based band numbers like 1,2,3")


def parse_class_ids(ctx: click.Context, param: click.Parameter, value: str | None,
                    ) -> tuple[int, ...] | None:
    """Parse ``--classes 1,3`` into class ids."""
    return _parse_ids(value, 0, "class ids like 1,3")


def _parse_ids(value: str | None, smallest: int, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        ids = tuple(int(b) for b in value.split(",") if b.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give {what}") from None
    if not ids or any(b < smallest for b in ids):
        raise click.BadParameter(f"{value!r}: give {what}")
    return ids


overwrite = click.option("--overwrite", is_flag=True, help="Replace existing outputs.")


class InputPath(click.Path):
    """``click.Path`` of an existing input: a FIFO, device or symlink loop is named as such
    (click would call a loop "does not exist" and would open a FIFO and wait)."""

    def __init__(self, kind: str = "input", file_okay: bool = True, dir_okay: bool = False):
        super().__init__(exists=True, file_okay=file_okay, dir_okay=dir_okay, path_type=Path)
        self.kind = kind

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        path = Path(value)
        if not (self.dir_okay and path.is_dir()):
            try:
                require_regular_file(path, self.kind)
            except GeoUNetError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


class OutputPath(click.Path):
    """``click.Path`` of an output file: a name ending in a path separator means a folder
    (``out/``), which ``Path`` would silently turn into a file named ``out``."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value}: names a folder (it ends with {value[-1]!r}); give an output "
                      "file name", param, ctx)
        return super().convert(value, param, ctx)


def setting_option(model: type[BaseModel], name: str, *flags: str, **changes: Any,
                   ) -> Callable[[Callable], Callable]:
    """A click option for the setting ``name`` of ``model`` (a :mod:`geounet.settings`
    model): its default, range or choices and help come from the field, so the CLI cannot
    drift from the API and the workflow keys. ``flags`` default to ``--name-with-dashes``;
    ``changes`` override click's arguments (e.g. a ``callback`` that parses bands)."""
    field = model.model_fields[name]
    kind, bounds, choices = _field_type(field.annotation, list(field.metadata))
    arguments: dict[str, Any] = {"help": field.description}
    if kind is bool:
        arguments["is_flag"] = True
    elif choices and all(isinstance(c, int) for c in choices):
        arguments["type"] = click.Choice([str(c) for c in choices])
        arguments["callback"] = lambda ctx, param, value: None if value is None else int(value)
    elif choices:
        arguments["type"] = click.Choice([str(c) for c in choices])
    elif kind in (int, float):
        low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
        ranged = click.IntRange if kind is int else click.FloatRange
        arguments["type"] = ranged(low, high, min_open="gt" in bounds, max_open="lt" in bounds)
    if field.default is not None:
        arguments.update(default=field.default, show_default=True)
    arguments.update(changes)
    return click.option(*(flags or ("--" + name.replace("_", "-"),)), name, **arguments)


def _field_type(annotation: Any, metadata: list[Any]) -> tuple[Any, dict[str, Any], tuple]:
    """``(int|float|bool|str|None, {"ge"/"gt"/"le"/"lt": bound}, literal choices)`` of a
    field."""
    from typing import Annotated, Literal, Union, get_args, get_origin

    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            metadata += list(getattr(item, "metadata", [item]))
        return _field_type(base, metadata)
    if origin is Literal:
        return str, {}, get_args(annotation)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):   # the first of Optional[X] / Literal | Callable
            if arg is not type(None):
                return _field_type(arg, metadata)
    bounds = {key: getattr(item, key) for item in metadata for key in ("ge", "gt", "le", "lt")
              if getattr(item, key, None) is not None}
    return (annotation if annotation in (int, float, bool, str) else None), bounds, ()
