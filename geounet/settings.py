"""The settings of each stage, defined once.

Each model below is the one place where a setting has its name, type, default, range and
description. The same model is

- the Python API's settings (``PredictConfig`` adds only per-call options: where and how the
  files are written);
- the workflow YAML's section (``tiling:`` is :class:`TilingSettings`; the top-level
  ``bands``, ``device``, ``engine``, ``amp`` and ``threads`` of a workflow are
  :class:`RuntimeSettings`);
- the source of the CLI options (:func:`geounet.cli.options.setting_option` builds an option's
  default, range and help from the field).

``None`` means "as the checkpoint recommends" for tiling, "torch's default" for threads.
Models are frozen and validated; building a call's settings (:class:`CallSettings`) with a
bad value raises one :class:`~geounet.errors.ConfigError` line naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geounet.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
WindowName = Literal["hann", "average"]
Engine = Literal["auto", "torch", "onnx"]


class Settings(BaseModel):
    """A frozen, validated group of settings; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class CallSettings(Settings):
    """Settings a caller builds (the Python API, the CLI): a bad value is one ConfigError line
    naming the setting. (Not a base of the workflow's sections: pydantic would call this
    ``__init__`` while validating a workflow, and the error would lose its place in the file.)
    """

    def __init__(self, *args: Any, **values: Any) -> None:
        if len(args) > len(type(self).model_fields):
            raise ConfigError(f"{type(self).__name__} takes at most "
                              f"{len(type(self).model_fields)} settings, got {len(args)}")
        values |= dict(zip(type(self).model_fields, args))  # in declaration order
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe_error(type(self), exc)) from None


def describe_error(model: type[BaseModel], exc: ValidationError) -> str:
    """The first problem of a validation error as one line naming the setting."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "settings"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return (f"{name!r} is not a setting of {model.__name__}; choose from "
                f"{', '.join(model.model_fields)}")
    field = model.model_fields.get(name)
    choices = literal_choices(field.annotation) if field is not None else ()
    if choices:
        what = f"{value!r} is not known; choose one of {', '.join(map(str, choices))}"
    else:
        what = f"{error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"
    label = f"{name.replace('_', ' ')} ({name})" if "_" in name else name
    return f"{label}: {what}"


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values of the ``Literal`` types inside ``annotation`` (e.g. of a union)."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) for v in literal_choices(arg))


class TilingSettings(Settings):
    """How a raster is cut into tiles and blended back (the workflow's ``tiling:``)."""

    tile_size: Annotated[int, Field(ge=16)] | None = Field(
        None, description="Tile edge in pixels (unset: the checkpoint's).")
    overlap: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Overlap between neighbouring tiles in pixels (unset: the "
                          "checkpoint's).")
    batch_size: PositiveInt = Field(4, description="Tiles per forward pass.")
    block_tiles: PositiveInt = Field(
        2, description="Blocks of NxN tiles: the unit of memory (memory ~ its square).")
    window: WindowName | Callable[..., Any] = Field(
        "hann", description="Blend window across overlaps: hann or average (the API also "
                            "takes a profile function).")
    threshold: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="Foreground probability cut of a binary model (unset: the "
                          "checkpoint's).")
    tta: bool = Field(False, description="Average the 8 flips/quarter turns of each tile "
                                         "(test-time augmentation, ~8x the model time).")


class RuntimeSettings(Settings):
    """What runs the model and on which bands (top-level keys of a workflow)."""

    # Checked against the raster when it is opened (the message lists its bands).
    bands: tuple[int, ...] | None = Field(
        None, description="1-based input bands in model order (unset: the checkpoint's).")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    engine: Engine = Field(
        "auto", description="Forward pass: torch, onnx (ONNX Runtime, CPU) or auto (onnx on "
                            "the CPU, torch on CUDA).")
    amp: bool = Field(True, description="Mixed precision (float16 autocast) on CUDA.")
    threads: PositiveInt | None = Field(
        None, description="CPU threads for the model (unset: torch's default).")


class PredictSettings(TilingSettings, RuntimeSettings):
    """Every setting of inference (see :mod:`geounet.predict`)."""


class VectorizeSettings(Settings):
    """How a class mask becomes features (see :mod:`geounet.vectorize`; the workflow's
    ``vectorize:``). Areas and lengths are in map units of the mask's CRS."""

    connectivity: Literal[4, 8] = Field(
        4, description="4 (edge neighbours) or 8 (edge and corner neighbours).")
    block_size: Annotated[int, Field(ge=2)] = Field(
        2048, description="Mask block edge in pixels: the unit of memory.")
    classes: tuple[int, ...] | None = Field(
        None, description="Class ids to vectorize (unset: every class but 0, background).")
    min_area: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Drop polygons smaller than this (square map units).")
    min_pixels: Annotated[int, Field(ge=0)] = Field(
        0, description="Drop polygons of fewer pixels than this.")
    fill_holes: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Fill holes smaller than this (square map units).")
    simplify: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Topology-preserving simplification tolerance (map units).")
    centerlines: bool = Field(
        False, description="Measure skeleton length and widths of the linear classes.")
    linear_classes: tuple[int, ...] | None = Field(
        None, description="Class ids that get centerlines (unset: every vectorized class).")
    spur_length: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Prune centerline branches shorter than this (map units; unset: "
                          "twice the local half-width).")
    workers: Annotated[int, Field(ge=0)] = Field(
        0, description="Processes polygonizing blocks (1: this one only; 0: for a mask of "
                        "32 Mpx or more, one per CPU but one, which merges and writes, each "
                        "about 200 MB; below, with centerlines, one helper process computes "
                        "the skeletons). More than one needs the "
                        "`if __name__ == \"__main__\":` guard in scripts.")


def setting_names(model: type[Settings]) -> list[str]:
    """The settings of ``model`` in declaration order."""
    return list(model.model_fields)
