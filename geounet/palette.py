"""Class colours: one readable palette for previews, legends and checkpoints.

Colours are ``'#rrggbb'`` strings in checkpoints and YAML (what a user writes and reads), RGB
tuples where pixels are painted. Class 0 (background) is drawn only in legends of
multi-class models; ids 1, 2, ... take :data:`CLASS_COLOURS` in turn (the palette repeats).

Label palettes (:func:`parse_palette`) go the other way: the colours of an RGB label mask,
each mapped to the class it stands for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

#: Overlay colours of class ids 1, 2, ... (class 0 is background and not drawn).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 200), (0, 200, 255), (255, 200, 0), (0, 255, 80), (255, 60, 0), (160, 80, 255),
)
BACKGROUND = (40, 40, 40)
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def to_hex(colour: Sequence[int]) -> str:
    """``'#rrggbb'`` of an RGB triple (0..255 each)."""
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def to_rgb(colour: str) -> tuple[int, int, int]:
    """RGB triple of ``'#rrggbb'``."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """Default overlay colour of a class id (1-based; the palette repeats)."""
    return CLASS_COLOURS[(class_id - 1) % len(CLASS_COLOURS)]


def default_class_colors(count: int) -> tuple[str, ...]:
    """``count`` colours by class id: dark grey for the background, then the palette."""
    return tuple(to_hex(BACKGROUND if i == 0 else class_colour(i)) for i in range(count))


def colors_problem(colors: object, count: int) -> str | None:
    """What is wrong with ``colors`` as one ``'#rrggbb'`` per class of ``count``, or None."""
    if not isinstance(colors, (list, tuple)) or not all(
            isinstance(c, str) and _HEX.fullmatch(c) for c in colors):
        return f"must be a list of '#rrggbb' colours, got {colors!r}"
    if len(colors) != count:
        return f"gives {len(colors)} colours for {count} classes"
    return None


# Palette label masks ---------------------------------------------------------------------
#
# Published datasets often give labels as RGB images, one colour per class (ISPRS Potsdam,
# LoveDA, DeepGlobe). A palette maps each colour to a class: ``{'#rrggbb': CLASS}`` where
# CLASS is a class name or id. Several colours may share a class; a colour has one class.

def palette_file(value: str | None) -> Path | None:
    """The file a --palette value names (None for an inline palette, text with ``=``)."""
    return Path(value) if value is not None and "=" not in value else None


def parse_palette(value: object) -> dict[str, str | int]:
    """A palette as ``{'#rrggbb' (lower case): class name or id}``.

    ``value`` is a mapping of colours to classes, a YAML or JSON file holding one (a path),
    or inline text ``CLASS=#rrggbb,CLASS=#rrggbb`` (text with ``=``). Class ids written as
    digits become ints. Raises ``ValueError`` with one line saying what is wrong.
    """
    if isinstance(value, str) and "=" in value:
        pairs = []
        for item in value.split(","):
            name, sep, colour = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{item.strip()!r} is not CLASS=#rrggbb (inline palettes are "
                                 "comma-separated pairs: building=#ff0000,water=#0000ff)")
            pairs.append((colour.strip(), name.strip()))
        return _palette_of(pairs, "inline palette")
    if isinstance(value, (str, Path)):
        return _palette_of(_read_palette_file(Path(value)), str(value))
    if isinstance(value, dict):
        return _palette_of(list(value.items()), "mapping")
    raise ValueError(f"give a mapping {{'#rrggbb': CLASS}}, a YAML/JSON file of one, or "
                     f"CLASS=#rrggbb,... (got {type(value).__name__})")


def _read_palette_file(path: Path) -> list[tuple[object, object]]:
    """The (colour, class) pairs of a palette file (YAML, so JSON too)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the palette file ({exc.strerror}); give a "
                         "YAML/JSON file or inline CLASS=#rrggbb,...") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not a YAML/JSON palette "
                         f"({str(exc).splitlines()[0]})") from None
    if raw is None:
        raise ValueError(f"{path}: the palette is empty; quote the colours "
                         "('#ff0000': building): in YAML an unquoted # starts a comment")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a palette file is a mapping of '#rrggbb' colours to "
                         "class names or ids")
    return list(raw.items())


def _palette_of(pairs: Sequence[tuple[object, object]], origin: str) -> dict[str, str | int]:
    """Checked, normalized ``{'#rrggbb': class}`` of (colour, class) pairs."""
    if not pairs:
        raise ValueError(f"{origin}: the palette maps no colour")
    out: dict[str, str | int] = {}
    for colour, cls in pairs:
        if not isinstance(colour, str) or not _HEX.fullmatch(colour.strip()):
            hint = "" if origin == "inline palette" else \
                " (quote it in YAML: an unquoted # starts a comment)"
            raise ValueError(f"{origin}: colour {colour!r} is not '#rrggbb'{hint}")
        key = colour.strip().lower()
        if isinstance(cls, str) and cls.strip().isdigit():
            cls = int(cls.strip())
        if isinstance(cls, bool) or not isinstance(cls, (str, int)) or cls == "":
            raise ValueError(f"{origin}: colour {key} maps to {cls!r}, not a class name or id")
        if key in out and out[key] != cls:
            raise ValueError(f"{origin}: colour {key} is given twice ({out[key]!r} and "
                             f"{cls!r})")
        out[key] = cls.strip() if isinstance(cls, str) else cls
    return out
