"""Workflow files: one YAML document describing a whole batch job, validated before any work.

A workflow names its inputs (a folder and a glob, a list of files, or a text file of paths),
the model, the inference and vectorization settings, where and under which names outputs go,
how often to retry, when to run (a cron expression) and on what (the local process or a Dask
cluster). Relative paths are relative to the workflow file's folder.

Loading is safe and bounded: the file must be a regular file of at most ``MAX_BYTES``; the
document is composed with :class:`yaml.SafeLoader`, so tags that would construct Python
objects (``!!python/object``...) are refused, and composing stops at ``MAX_LEVELS`` levels of
nesting, at ``MAX_VALUES`` values once aliases are expanded (an "alias bomb" of a few hundred
bytes names billions) and at an alias used inside the value it names (a loop). Every key is
checked by pydantic models that forbid unknown keys, then paths are checked (input folder,
list file and model exist; name templates name a file directly inside the output folder, with
an extension that agrees with ``vector_format``; a schedule fires). Any problem raises one
:class:`~geounet.errors.ConfigError` naming the file, the line, the key path and the cause,
before anything is read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import string
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from geounet.errors import ConfigError
from geounet.inputs import require_regular_file
from geounet.settings import PositiveInt, RuntimeSettings, TilingSettings, VectorizeSettings

TEMPLATE_FIELDS = ("stem", "name")   # {stem}: file name without extension; {name}: with it
VectorFormat = Literal["gpkg", "geojson", "shapefile", "parquet"]
# A workflow is a few KB. These bound the (pure-Python) parse to well under a second whatever
# the file holds; an explicit list of thousands of inputs belongs in a file (inputs.file).
MAX_BYTES = 256 * 1024
MAX_VALUES = 10_000   # YAML nodes (keys, values, items) with every alias expanded
MAX_LEVELS = 32       # nesting, aliases expanded; a workflow uses 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputsConfig(_Strict):
    """Where the input rasters are: exactly one of ``folder`` (+ ``glob``), ``list``, ``file``."""

    folder: Path | None = None
    glob: str = "*.tif"
    recursive: bool = False
    list: tuple[Path, ...] | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputsConfig:
        given = [k for k in ("folder", "list", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of folder (with glob), list or file; got "
                             f"{', '.join(given) or 'none'}")
        return self


class OutputsConfig(_Strict):
    """Output folder and name templates (``{stem}``, ``{name}``); null skips that output.

    ``overwrite``: ``changed`` replaces outputs this workflow made when their input, model or
    settings changed and refuses other existing files; ``always`` reprocesses every item;
    ``never`` refuses to replace any existing file.
    """

    folder: Path
    # Before the names: their validators compare each name's extension with it.
    vector_format: VectorFormat | None = None
    mask: str | None = "{stem}_mask.tif"
    probabilities: str | None = None
    vector: str | None = "{stem}.gpkg"      # with vector_format alone: that format's extension
    centerlines: str | None = None
    preview: str | None = "{stem}_preview.png"
    cog: bool = False
    overwrite: Literal["changed", "always", "never"] = "changed"

    @model_validator(mode="before")
    @classmethod
    def _vector_name_from_format(cls, data: Any) -> Any:
        """``vector_format: shapefile`` without a vector name writes ``{stem}.shp``."""
        if (isinstance(data, dict) and "vector" not in data
                and data.get("vector_format") in get_args(VectorFormat)):
            data = {**data, "vector": "{stem}" + format_extension(data["vector_format"])}
        return data

    @field_validator("mask", "probabilities", "vector", "centerlines", "preview")
    @classmethod
    def _template_inside_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_template(value)
            if info.field_name in ("vector", "centerlines"):
                check_vector_template(value, info.data.get("vector_format"))
        return value

    @model_validator(mode="after")
    def _something_to_write(self) -> OutputsConfig:
        if self.mask is None and self.probabilities is None and self.vector is None:
            raise ValueError("nothing to write: give a mask, probabilities and/or vector name")
        if self.centerlines is not None and self.vector is None:
            raise ValueError("centerlines are written with the polygons: give a vector name")
        return self


class VectorizeOptions(VectorizeSettings):
    """The vectorize settings (:class:`geounet.settings.VectorizeSettings`) and ``crs``, which
    reprojects the features. ``centerlines`` measures length and width of linear classes;
    ``outputs.centerlines`` also writes the centerlines as lines (and implies it)."""

    crs: str | None = None


class ScheduleConfig(_Strict):
    """When ``geounet schedule`` runs the workflow: a 5-field cron expression and time zone."""

    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            trigger = CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a 5-field cron expression ({exc})") from None
        if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:
            raise ValueError(f"{value!r} never fires (no date matches it, e.g. 30 February); "
                             "check the day, month and weekday fields")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from apscheduler.util import astimezone

        try:
            astimezone(value)   # what the scheduler will use
        except (KeyError, ValueError, OSError) as exc:   # zoneinfo's errors for bad keys
            raise ValueError(f"{value!r} is not a known time zone; give an IANA name such as "
                             "UTC or Europe/Paris") from exc
        return value


class ExecutorConfig(_Strict):
    """What runs the items: ``local`` (this process, one item at a time) or ``dask``.

    For Dask, ``scheduler`` (``tcp://host:port``) connects to an existing cluster; without it a
    LocalCluster of ``workers`` single-threaded workers is started (``processes``: one process
    per worker). A raster of at least ``split_min_pixels`` pixels is split into row regions of
    ``region_block_rows`` block rows of the global tile grid, computed on different workers
    and assembled into one output.
    """

    kind: Literal["local", "dask"] = "local"
    scheduler: str | None = Field(default=None, pattern=r"^(tcp|tls|inproc)://\S+$")
    workers: PositiveInt = 2
    processes: bool = True
    split_min_pixels: PositiveInt | None = None
    region_block_rows: PositiveInt = 2

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class Workflow(RuntimeSettings):
    """A validated workflow; paths are absolute (resolved against the workflow's folder).

    ``tiling`` and the top-level ``bands``, ``device``, ``engine``, ``amp`` and ``threads``
    are the settings of :mod:`geounet.settings`, with their defaults except one: a workflow
    runs torch on one thread unless told otherwise, so its outputs are the same bytes on
    every machine (torch's CPU results are bit-identical only at equal thread counts) and
    Dask workers x threads never oversubscribe the cores.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: InputsConfig
    model: Path
    tiling: TilingSettings = TilingSettings()
    threads: PositiveInt | None = Field(1, description="CPU threads for the model per item.")
    outputs: OutputsConfig
    vectorize: VectorizeOptions = VectorizeOptions()
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    schedule: ScheduleConfig | None = None
    executor: ExecutorConfig = ExecutorConfig()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("bands")
    @classmethod
    def _one_based(cls, bands: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if bands is not None and (not bands or min(bands) < 1):
            raise ValueError(f"{list(bands)}: give 1-based band numbers like [1, 2, 3]")
        return bands

    def output_settings(self) -> dict[str, Any]:
        """The settings that change output bytes (hashed into the manifest, in the report).

        Excludes what only changes how the work is run (executor, retries, schedule,
        overwrite policy, input discovery, the engine: its probabilities agree with torch's
        within float noise) so that, for example, moving a workflow onto a Dask cluster does
        not redo finished items. ``device: auto`` counts as the device it picks here.
        Settings added later count only when not at their default, so manifests written
        before them stay valid (the outputs are the same bytes).
        """
        tiling = self.tiling.model_dump(exclude=None if self.tiling.tta else {"tta"})
        settings = {
            "bands": self.bands, "tiling": tiling, "device": self.resolved_device(),
            "threads": self.threads,
            "outputs": self.outputs.model_dump(exclude={"folder", "overwrite"}),
            # workers: how the polygons are made, not what they are.
            "vectorize": self.vectorize.model_dump(exclude={"workers"}),
        }
        return settings | ({} if self.amp else {"amp": False})

    def resolved_device(self) -> str:
        """``device``, with ``auto`` as the kind it picks on this machine (cuda or cpu)."""
        if self.device != "auto":
            return self.device
        from geounet.model import resolve_device  # torch: loaded on use

        return resolve_device("auto").type

    def settings_sha256(self) -> str:
        text = json.dumps(self.output_settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def check_template(template: str) -> None:
    """Refuse a name template that could name a file outside the output folder."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid name template ({exc})") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"{template!r}: only {{stem}} and {{name}} may appear in a name "
                             f"template, found {{{field}}}")
    sample = template.format(stem="x", name="x.tif")
    if "\\" in sample or posixpath.isabs(sample):
        raise ValueError(f"{template!r} escapes the output folder; give a relative name")
    normal = posixpath.normpath(sample)
    if normal == ".." or normal.startswith("../") or normal in (".", ""):
        raise ValueError(f"{template!r} escapes the output folder; give a name inside it")
    if "/" in sample:
        raise ValueError(f"{template!r} names a subfolder; give a file name only (outputs "
                         "go directly into outputs.folder: point that at the subfolder)")
    if not any(field for _, field, _, _ in parts):
        raise ValueError(f"{template!r} has no {{stem}} or {{name}}: every input would write "
                         "the same file")


def check_vector_template(template: str, fmt: str | None) -> None:
    """Refuse a vector name whose extension does not say its format, or that disagrees with
    ``fmt`` (a ``vector_format`` value): every item would fail when it is written."""
    from geounet.outputs import FORMATS, vector_format

    stem, extension = posixpath.splitext(template)
    sample = Path(template.format(stem="x", name="x.tif"))
    if fmt is None:
        if sample.suffix.lower() not in FORMATS:
            ending = repr(extension) if extension else "a name without an extension"
            raise ValueError(f"{template!r}: cannot tell the vector format from {ending}; end "
                             f"it in one of {', '.join(FORMATS)} or set outputs.vector_format")
        return
    try:
        vector_format(sample, fmt)
    except ConfigError:
        raise ValueError(f"{template!r} does not agree with vector_format {fmt!r}; name it "
                         f"{stem + format_extension(fmt)!r} or change vector_format") from None


def format_extension(fmt: str) -> str:
    """The file extension of a ``vector_format`` name: ``shapefile`` -> ``.shp``."""
    from geounet.outputs import FORMATS, vector_format

    for extension in FORMATS:   # the first extension the format accepts
        with contextlib.suppress(ConfigError):
            vector_format(Path("x" + extension), fmt)
            return extension
    raise ValueError(f"unknown vector format {fmt!r}")


@dataclass(frozen=True)
class _Located:
    """Line numbers (1-based) of each key path in a YAML document."""

    lines: dict[tuple, int]

    def line_of(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def key_at(self, line: int) -> str:
        """``"key.path: "`` of the deepest key on ``line`` (empty when none)."""
        paths = [p for p, n in self.lines.items() if n == line and p and isinstance(p[-1], str)]
        return f"{_dotted(max(paths, key=len))}: " if paths else ""


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses, with the line, documents that would make the
    loader (or anything walking the result) work without end: more than ``MAX_LEVELS``
    levels, more than ``MAX_VALUES`` values once aliases are expanded, and an alias inside
    the value it names. Aliased nodes are shared, so the counts cost one pass over the text."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded: dict[yaml.Node, tuple[int, int]] = {}  # anchored: (values, levels)
        self._values = 0     # values so far, aliases expanded
        self._level = 0      # level of the node being composed
        self._deepest = 0    # deepest level reached so far, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            # types-PyYAML: an event's mark is either loader's Mark or None; this pure-Python
            # loader always sets a yaml.Mark.
            mark: yaml.Mark = event.start_mark  # type: ignore[assignment]
            node = super().compose_node(parent, index)
            if node not in self._expanded:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} is used inside the value it names, "
                    "which would repeat without end", mark)
            values, levels = self._expanded[node]
            self._count(values, self._level + levels, mark, aliased=True)
            return node
        self._count(1, self._level + 1, event.start_mark, aliased=False)
        start, outer = self._values - 1, self._deepest
        self._level += 1
        self._deepest = self._level
        # types-PyYAML says Optional; PyYAML's compose_node returns a node or raises.
        node = super().compose_node(parent, index)
        self._level -= 1
        if getattr(event, "anchor", None) is not None:
            self._expanded[node] = (  # type: ignore[index]
                self._values - start, self._deepest - self._level)
        self._deepest = max(outer, self._deepest)
        return node  # type: ignore[return-value]

    def _count(self, values: int, level: int, mark: yaml.Mark, aliased: bool) -> None:
        self._values += values
        self._deepest = max(self._deepest, level)
        if level > MAX_LEVELS:
            through = " through aliases" if aliased else ""
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_LEVELS} levels deep{through}; a workflow "
                "uses 3 or 4", mark)
        if self._values > MAX_VALUES:
            problem = (f"aliases here expand the document past {MAX_VALUES} values (an alias "
                       "bomb?); write the values out" if aliased else
                       f"more than {MAX_VALUES} values; a workflow needs a few dozen (give a "
                       "long list of inputs as a file of paths: inputs.file)")
            raise yaml.composer.ComposerError(None, None, problem, mark)


def _key_lines(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict:
    lines = {} if lines is None else lines
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines[sub] = key.start_mark.line + 1
            _key_lines(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _key_lines(value, path + (i,), lines)
    return lines


def _dotted(path: tuple) -> str:
    """``outputs.vector``, ``inputs.list[2]``; keys cut to 40 characters (one short line)."""
    out = ""
    for part in path:
        if not isinstance(part, int):
            part = str(part) if len(str(part)) <= 40 else f"{str(part)[:37]}..."
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def load_workflow(path: str | Path) -> Workflow:
    """Read, validate and resolve a workflow file; raise one ``ConfigError`` on any problem."""
    path = Path(path)
    text = _read_text(path)
    loader = _BoundedLoader(text)
    located = _Located({})
    try:
        node = loader.get_single_node()  # composing builds no objects
        located = _Located(_key_lines(node) if node is not None else {})
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        hint = ("; only plain YAML is accepted (no object tags)"
                if isinstance(exc, yaml.constructor.ConstructorError) else "")
        raise ConfigError(f"{path}:{line}: {located.key_at(line)}{exc.problem}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a workflow is a mapping of keys (name, inputs, model, "
                          "outputs, ...)")
    try:
        workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against the documented keys"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}:{located.line_of(loc)}: {_dotted(loc)}: {message}"
                          f"{more}") from None
    return _resolve(workflow, path, located)


def _read_text(path: Path) -> str:
    """The text of a workflow file: a regular file of at most ``MAX_BYTES``, in UTF-8."""
    require_regular_file(path, "workflow", ConfigError)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
        if len(data) > MAX_BYTES:
            raise ConfigError(
                f"{path}: too large for a workflow ({_size(max(size, len(data)))}, at most "
                f"{_size(MAX_BYTES)}); a workflow is a few KB: give long lists of inputs as "
                "a file of paths (inputs.file)")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the workflow ({exc})") from exc


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes // 1024} KiB"


def _resolve(workflow: Workflow, path: Path, located: _Located) -> Workflow:
    """Absolute paths against the workflow's folder; check the ones that must exist."""
    base = path.resolve().parent

    def absolute(p: Path) -> Path:
        return (base / p.expanduser()).resolve()

    def fail(key: tuple, message: str) -> ConfigError:
        return ConfigError(f"{path}:{located.line_of(key)}: {_dotted(key)}: {message}")

    inputs = workflow.inputs
    update: dict[str, Any] = {}
    if inputs.folder is not None:
        folder = absolute(inputs.folder)
        if not folder.is_dir():
            raise fail(("inputs", "folder"), f"{folder} is not an existing folder")
        update["folder"] = folder
    if inputs.file is not None:
        listing = absolute(inputs.file)
        if not listing.is_file():
            raise fail(("inputs", "file"), f"{listing}: no such file of input paths")
        update["file"] = listing
    if inputs.list is not None:
        update["list"] = tuple(absolute(p) for p in inputs.list)
        for i, item in enumerate(update["list"]):
            if not item.is_file():
                raise fail(("inputs", "list", i), f"{item}: no such input file")
    model = absolute(workflow.model)
    if not model.is_file():
        raise fail(("model",), f"{model}: no such checkpoint")
    out_folder = absolute(workflow.outputs.folder)
    if out_folder.exists() and not out_folder.is_dir():
        raise fail(("outputs", "folder"), f"{out_folder} exists and is not a folder")
    return workflow.model_copy(update={
        "inputs": inputs.model_copy(update=update), "model": model,
        "outputs": workflow.outputs.model_copy(update={"folder": out_folder}),
        "source": path.resolve(),
    })


def read_input_list(listing: Path) -> list[Path]:
    """Paths in a text file, one a line (blank lines and ``#`` comments skipped), relative
    to the file's folder."""
    paths = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append((listing.parent / Path(line).expanduser()).resolve())
    return paths
