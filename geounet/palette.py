"""Class colours: one readable palette for previews, legends and checkpoints.

Colours are ``'#rrggbb'`` strings in checkpoints and YAML (what a user writes and reads), RGB
tuples where pixels are painted. Class 0 (background) is drawn only in legends of
multi-class models; ids 1, 2, ... take :data:`CLASS_COLOURS` in turn (the palette repeats).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
