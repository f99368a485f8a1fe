"""The settings of a training run: one schema for YAML keys and CLI flags.

:class:`TrainConfig` is frozen and forbids unknown keys; :meth:`TrainConfig.load` reads a YAML
file (flags given as overrides win over its keys), :meth:`TrainConfig.build` turns validation
errors into one :class:`~geounet.errors.ConfigError` line naming each bad key. The training
data is described here too: explicit image and label lists, then two folders paired by file
stem, then a split file that keeps the names of one split (:meth:`TrainConfig.pairs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from geounet.errors import ConfigError
from geounet.labels import pair_folders, select_split

Monitor = Literal["iou", "f1", "tolerant_f1", "miou"]
LossName = Literal["bce_dice", "focal_dice", "bce"]
UNLABELLED = "unlabelled"   # a class of this name marks pixels the loss and scores skip


PATH_KEYS = ("images", "labels", "image_dir", "label_dir", "split_file", "val_images",
             "val_labels", "palette")


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` with its relative paths (:data:`PATH_KEYS`) joined to ``base``; ``~`` is the
    user's home. Values of the wrong type are left for validation to name, and so are
    inline palettes (text with ``=``)."""
    def join(value: Any) -> Any:
        return base / Path(value).expanduser() if isinstance(value, str) \
            and "=" not in value else value

    return {key: ([join(v) for v in value] if isinstance(value, list) else join(value))
            if key in PATH_KEYS else value for key, value in raw.items()}


class TrainConfig(BaseModel):
    """Everything that defines a training run (YAML keys and CLI flags share these names).

    Paths in a YAML file are relative to that file's folder, as in workflows; paths given
    as flags or in Python are relative to the working directory. Pixel sizes are in pixels
    of the images.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data
    images: list[Path] = Field(default_factory=list, description="training images")
    labels: list[Path] = Field(default_factory=list, description="one label per image")
    image_dir: Path | None = Field(None, description="folder of images, paired by stem")
    label_dir: Path | None = Field(None, description="folder of labels, paired by stem")
    split_file: Path | None = Field(None, description="lines 'NAME SPLIT'; keep `split`")
    split: str = "train"
    val_images: list[Path] = Field(default_factory=list)
    val_labels: list[Path] = Field(default_factory=list)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    bands: tuple[int, ...] | None = None
    line_width: float = Field(3.0, ge=0, description="full width given to vector lines")
    line_width_units: Literal["pixels", "map", "metres"] = "pixels"
    class_names: tuple[str, ...] = Field(("background", "foreground"), min_length=2,
                                         max_length=254, description="by class id, "
                                         "background (id 0) first; two: a binary model, "
                                         "more: a softmax model")
    class_field: str | None = Field(None, description="attribute of vector labels holding "
                                    "each feature's class id or class name")
    ignore_value: int | None = Field(None, ge=0, le=254, description="label value meaning "
                                     "unlabelled (besides nodata and 255); default: the id "
                                     "of a class named 'unlabelled', if any")
    class_weights: list[float] | Literal["auto"] | None = Field(
        None, description="per-class weights of the pixel loss (softmax models), or 'auto': "
        "inverse square root of each class's share of the valid training pixels")
    class_colors: tuple[str, ...] | None = Field(None, description="'#rrggbb' per class for "
                                                 "previews; default: a readable palette")
    palette: dict[str, str | int] | None = Field(
        None, description="RGB label masks: {'#rrggbb': class name or id}, a YAML/JSON file "
        "of that mapping, or CLASS=#rrggbb,...; every colour of a mask must be listed")
    unlabelled_outside: bool = Field(False, description="vector labels with class_field: "
                                     "pixels outside every feature are unlabelled (ignored), "
                                     "not background")
    softmax: bool = Field(False, description="two class names: a two-channel softmax model "
                          "instead of the binary sigmoid one (more names: always softmax)")
    # Model
    width: int = Field(16, ge=1)
    depth: int = Field(4, ge=1)
    bilinear: bool = True
    # Optimisation
    patch: int = Field(256, ge=16)
    batch_size: int = Field(8, ge=1)
    epochs: int = Field(20, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1, description="share of steps with rising lr")
    loss: LossName = "bce_dice"
    pos_fraction: float = Field(0.5, ge=0, le=1)
    hard_fraction: float = Field(0.0, ge=0, le=1, description="share of windows centred on "
                                 "pixels the model got wrong after the previous epoch")
    scale_range: tuple[float, float] = (0.8, 1.25)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0, lt=1)
    monitor: Monitor = "iou"
    tolerance: float = Field(2.0, ge=0, description="pixels, for tolerant_f1")
    patience: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    # Runtime
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(False, description="mixed precision (CUDA only)")
    deterministic: bool = True
    # Stored in the checkpoint for inference
    tile_size: int = Field(576, ge=16)
    overlap: int = Field(64, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    source: dict[str, str] = Field(default_factory=dict)

    @field_validator("palette", mode="before")
    @classmethod
    def _read_palette(cls, value: Any) -> Any:
        from geounet.palette import parse_palette

        return None if value is None else parse_palette(value)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.patch % 2**self.depth:
            raise ValueError(f"patch {self.patch} must be a multiple of 2**depth = "
                             f"{2**self.depth}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range {self.scale_range}: give 0 < low <= high")
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be below half of tile_size")
        n = len(self.class_names)
        if len(set(self.class_names)) != n:
            raise ValueError(f"class_names {list(self.class_names)} repeat a name")
        if isinstance(self.class_weights, list) and (
                len(self.class_weights) != n or min(self.class_weights) < 0):
            raise ValueError(f"class_weights: give {n} weights >= 0 (one per class) or 'auto'")
        if self.class_colors is not None:
            from geounet.palette import colors_problem
            problem = colors_problem(self.class_colors, n)
            if problem:
                raise ValueError(f"class_colors: {problem}")
        if self.ignore_value is not None and self.ignore_value < n \
                and self.class_names[self.ignore_value].lower() != UNLABELLED:
            raise ValueError(f"ignore_value {self.ignore_value} is the id of class "
                             f"{self.class_names[self.ignore_value]!r}")
        if self.palette is not None:
            palette_ids(self.palette, self.class_names, self.unlabelled)
        if self.unlabelled_outside and self.class_field is None:
            raise ValueError("unlabelled_outside needs class_field: without it every feature "
                             "is class 1 and no pixel would be labelled background; give the "
                             "attribute holding each feature's class (background included)")
        return self

    @property
    def classes(self) -> int:
        """Output channels of the model: 1 (binary, sigmoid) for two classes unless
        ``softmax``, else one per class."""
        return 1 if len(self.class_names) == 2 and not self.softmax else len(self.class_names)

    @property
    def palette_ids(self) -> tuple[tuple[str, int], ...]:
        """``('#rrggbb', class id)`` pairs of the palette (empty without one)."""
        return () if self.palette is None else palette_ids(self.palette, self.class_names,
                                                           self.unlabelled)

    @property
    def unlabelled(self) -> int | None:
        """The label value that marks unlabelled pixels (besides nodata and 255), or None."""
        if self.ignore_value is not None:
            return self.ignore_value
        names = [n.lower() for n in self.class_names]
        return names.index(UNLABELLED) if UNLABELLED in names else None

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML config; ``overrides`` (e.g. from CLI flags) win over its keys."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the YAML config ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a training config is a mapping of keys to values")
        return cls.build({**resolve_paths(raw, Path(path).parent), **overrides},
                         origin=str(path))

    @classmethod
    def build(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        """Validate ``values``; errors become one :class:`ConfigError` line per bad key."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                                 for e in exc.errors())
            raise ConfigError(f"{origin}: {problems}") from None

    def pairs(self) -> list[tuple[Path, Path]]:
        """Training (image, label) pairs: the lists, then the folders, then the split file."""
        if len(self.images) != len(self.labels):
            raise ConfigError(f"give one label per image ({len(self.images)} images, "
                              f"{len(self.labels)} labels)")
        pairs = list(zip(self.images, self.labels))
        if (self.image_dir is None) != (self.label_dir is None):
            raise ConfigError("give both image_dir and label_dir (or neither)")
        if self.image_dir is not None and self.label_dir is not None:
            pairs += pair_folders(self.image_dir, self.label_dir)
        pairs = select_split(pairs, self.split_file, self.split)
        if not pairs:
            raise ConfigError("no training pairs: give images and labels, or image_dir and "
                              "label_dir" + (f" with names in split {self.split!r} of "
                                             f"{self.split_file}" if self.split_file else ""))
        return pairs

    def val_pairs(self) -> list[tuple[Path, Path]]:
        """Explicit validation (image, label) pairs (none: validation is held out)."""
        if len(self.val_images) != len(self.val_labels):
            raise ConfigError("give one val_label per val_image")
        return list(zip(self.val_images, self.val_labels))


def palette_ids(palette: dict[str, str | int], class_names: tuple[str, ...],
                unlabelled: int | None) -> tuple[tuple[str, int], ...]:
    """``('#rrggbb', class id)`` pairs of ``palette``: class names are looked up in
    ``class_names``; ids must be class ids or the ``unlabelled`` value."""
    names = {name: i for i, name in enumerate(class_names)}
    ids = set(range(len(class_names))) | (set() if unlabelled is None else {unlabelled})
    out, unknown = [], []
    for colour, cls in palette.items():
        class_id = names.get(cls) if isinstance(cls, str) else cls
        if class_id is None or class_id not in ids:
            unknown.append(f"{colour} -> {cls!r}")
        else:
            out.append((colour, class_id))
    if unknown:
        raise ValueError(f"palette: {', '.join(unknown)} is not a class of "
                         f"{', '.join(class_names)} (names or ids 0..{len(class_names) - 1}); "
                         "fix the palette or class_names")
    return tuple(out)
