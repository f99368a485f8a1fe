"""End-of-run summaries shared by commands: a plain text table on stderr or JSON on stdout.

A command builds one JSON-ready dict (its machine-readable summary) plus the rows and columns
a person wants to read, then calls :func:`emit`. With ``--json`` the dict goes to stdout as
strict JSON (NaN and infinity become null); otherwise the table goes to stderr unless ``-q``,
so stdout stays clean for data either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class Column:
    """A table column: the row key, its header and how to format a value (``str`` default)."""

    key: str
    header: str
    format: Callable[[Any], str] = str
    align: str = ">"  # ">" right (numbers) or "<" left (names)


def fixed(digits: int) -> Callable[[Any], str]:
    """Format numbers with ``digits`` decimals (None and NaN as ``-``)."""

    def format_number(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:,.{digits}f}"

    return format_number


def significant(digits: int = 3) -> Callable[[Any], str]:
    """Format numbers with at least ``digits`` significant digits (all digits of the integer
    part, thousands separated), so a small nonzero measure never prints as 0.0: 0.0249 m^2
    is ``0.0249``, 12.345 is ``12.3`` (None and NaN as ``-``)."""

    def format_number(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if value == 0 or not math.isfinite(value):
            return f"{value:,.0f}" if value == 0 else str(value)
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
        return f"{value:,.{decimals}f}"

    return format_number


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Render ``rows`` as a plain text table with a header and a rule under it."""
    cells = [[c.header for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c.key) is None else c.format(row.get(c.key))
                      for c in columns])
    widths = [max(len(line[k]) for line in cells) for k in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        aligns = ["<"] * len(columns) if n == 0 else [c.align for c in columns]
        lines.append("  ".join(f"{text:{a}{w}}" for text, a, w in zip(line, aligns, widths))
                     .rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def strict(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so it encodes as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def emit(summary: Mapping[str, Any] | Sequence[Any], rows: Sequence[Mapping[str, Any]],
         columns: Sequence[Column], *, as_json: bool, quiet: bool,
         footer: Sequence[str] = ()) -> None:
    """Print ``summary`` as JSON on stdout, or the table (and footer lines) on stderr."""
    if as_json:
        click.echo(json.dumps(strict(summary), allow_nan=False))
    elif not quiet:
        click.echo(table(rows, columns), err=True)
        for line in footer:
            click.echo(line, err=True)
