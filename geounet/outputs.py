"""Writing outputs safely: checks before any work, temporary names, atomic renames.

Every file geounet writes goes through this module:

- :func:`check_outputs` refuses, before anything is computed, an output that exists (unless
  ``overwrite``), that is one of the command's inputs (even with ``overwrite``), that is not
  a regular file (a device, FIFO or folder: never replaced), whose folder is missing or not
  writable, or that names the same file as another output of the command. A multi-file
  output (a Shapefile's ``.shp``, ``.shx``, ``.dbf``, ``.prj``, ``.cpg``) is checked part by
  part, under the names :func:`output_parts` gives: the user's own name and the case of its
  extension.
- :func:`atomic_outputs` yields temporary paths beside the final ones and renames them all
  into place only when every one of them was written; on any failure (or Ctrl-C, or SIGTERM
  through the CLI) the temporaries are deleted and what was at the final paths before is
  left untouched. A failed write becomes one :class:`~geounet.errors.OutputError` line.
- Temporary names have one scheme: ``.{final name}.geounet-{host}-{pid}-{token}{extension}``
  (hidden, beside the final file, on the same file system so the rename is atomic). Only
  names of this scheme are ever deleted by :func:`remove_stale_temporaries`, which compares
  names literally (no pattern is built from user text) and, unless told that no other
  process can be writing, only deletes those of processes of this host that no longer run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import rasterio

from geounet.errors import ConfigError, GeoUNetError, OutputError

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
SQLITE_FULL = "database or disk is full"                 # SQLITE_FULL, as SQLite words it
SQLITE_FAILED = re.compile(r"sqlite3_\w+\(.*\) failed: (.+)$")  # GDAL: statement, SQLite's words
TEMP_MARK = "geounet-"
# Files a GDAL driver may write beside a temporary (removed with it on failure).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
GDAL_SIDECARS = (".aux.xml", ".ovr", "-journal", "-wal", "-shm")
# Vector formats by extension (GDAL driver names).
FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".shp": "ESRI Shapefile", ".parquet": "Parquet"}
_UMASK = os.umask(0o022)
os.umask(_UMASK)   # read once, at import, before any thread could create a file
FILE_MODE = 0o666 & ~_UMASK   # the mode of a new file: outputs get it whoever wrote them
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
_TEMP_REST = re.compile(r"^([0-9a-f]{4})-(\d+)-[0-9a-f]{8}(\.[^/]*)?$")


def output_parts(path: Path) -> list[Path]:
    """Every file that writing ``path`` creates: the path itself, and for a Shapefile its
    sidecars, named with the same stem and the case of the given extension
    (``OUT.SHP`` -> ``OUT.SHX``, ``OUT.DBF``...)."""
    path = Path(path)
    if path.suffix.lower() != ".shp":
        return [path]
    upper = path.suffix == ".SHP"
    return [path] + [path.with_suffix(ext.upper() if upper else ext)
                     for ext in SHAPEFILE_SIDECARS]


def required_parts(path: Path) -> list[Path]:
    """The files without which the output ``path`` cannot be read: itself, and for a
    Shapefile its .shx and .dbf (a .prj or .cpg may rightly be absent)."""
    return output_parts(path)[:3]


def check_vector_name(path: Path) -> None:
    """Refuse a vector file name that pyogrio would not pass to GDAL as it is: it reads
    ``a!b.gpkg`` as the member ``b.gpkg`` of an archive ``a``, and ``zip:``, ``s3:``...
    as URL schemes, so another file would be written or read."""
    from pyogrio.util import vsi_path  # the parsing pyogrio applies to every path

    if vsi_path(str(path)) != str(path):
        raise ConfigError(f"{path}: GDAL would read this name as {vsi_path(str(path))!r} "
                          "('!' and 'scheme:' are archive and URL syntax in vector file "
                          "names); rename the file")


def check_geotiff_name(path: Path | None) -> None:
    """Refuse a GeoTIFF output named as a vector or picture file (``mask.gpkg`` would hold a
    GeoTIFF that GIS tools open as something else, or not at all)."""
    if path is not None and path.suffix.lower() in (*FORMATS, ".png", ".jpg", ".jpeg"):
        raise ConfigError(f"{path}: {path.suffix!r} names another kind of file and this "
                          f"output is a GeoTIFF; name it {path.with_suffix('.tif').name}")


def vector_format(path: Path, name: str | None = None) -> str:
    """The driver for ``path`` from ``name`` (a --format value) or the extension; refuses a
    name GDAL would misread (:func:`check_vector_name`)."""
    check_vector_name(path)
    if path.suffix.lower() == ".shp" and path.suffix not in (".shp", ".SHP"):
        raise ConfigError(f"{path}: GDAL opens a Shapefile named .shp or .SHP, not "
                          f"{path.suffix!r}; name it {path.with_suffix('.shp').name}")
    by_extension = FORMATS.get(path.suffix.lower())
    if not name:
        if by_extension is None:
            raise ConfigError(f"{path}: cannot tell the format from {path.suffix!r}; use one "
                              f"of {', '.join(FORMATS)} or --format")
        return by_extension
    by_name = {v.lower(): v for v in FORMATS.values()} | {
        "gpkg": "GPKG", "shapefile": "ESRI Shapefile", "shp": "ESRI Shapefile",
        "geoparquet": "Parquet"}
    if name.lower() not in by_name:
        raise ConfigError(f"unknown vector format {name!r}; choose gpkg, geojson, "
                          "shapefile or parquet")
    driver = by_name[name.lower()]
    wanted = ".shp" if driver == "ESRI Shapefile" else None
    if (by_extension is not None and by_extension != driver) or (
            wanted and path.suffix.lower() != wanted):
        extension = wanted or next(e for e, d in FORMATS.items() if d == driver)
        raise ConfigError(f"{path}: the name's extension does not match the format {name!r}; "
                          f"name the file {path.with_suffix(extension).name}")
    return driver


def check_outputs(outputs: Sequence[Path | None], inputs: Sequence[str | Path | None],
                  overwrite: bool) -> list[Path]:
    """Check every output of one command before any work (see the module docstring).

    ``outputs`` may hold ``None`` for outputs not asked for; ``inputs`` are every file the
    command reads (rasters, models, labels, configs). Returns the outputs given.
    """
    given = [Path(p) for p in outputs if p is not None]
    # an input Shapefile is read with its sidecars: none of them is an output either
    read = [part for i in inputs if i is not None for part in output_parts(Path(i))]
    seen: dict[str, Path] = {}
    for path in given:
        for part in output_parts(path):
            key = _identity(part)
            if key in seen:
                raise ConfigError(f"{part} is given for two outputs; the outputs must be "
                                  "different files")
            seen[key] = path
            _check_part(part, path, read, overwrite)
    return given


def check_output(path: str | Path, inputs: Sequence[str | Path | None],
                 overwrite: bool) -> Path:
    """:func:`check_outputs` for one output."""
    return check_outputs([Path(path)], inputs, overwrite)[0]


def _identity(path: Path) -> str:
    """A key equal for two names of one file (resolved; case-folded where the folder is).

    ``os.path.realpath`` leaves a symlink loop unresolved instead of raising: the input
    check then names the loop."""
    return os.path.normcase(os.path.realpath(path))


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved name (case-folded where the
    folder is), or two hard links of it."""
    if _identity(a) == _identity(b):
        return True
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and a.samefile(b)
    return False


def _check_part(part: Path, output: Path, inputs: list[Path], overwrite: bool) -> None:
    for item in inputs:
        if same_file(part, item):
            what = "the output" if part == output else f"the output's part {part.name}"
            raise OutputError(f"{output}: {what} is the same file as the input {item}; "
                              "choose another output name")
    if part.is_symlink() and not part.exists():
        raise OutputError(f"{part}: is a symbolic link to a missing file; remove the link or "
                          "choose another output name")
    try:
        mode = part.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputError(f"{part}: cannot be checked ({exc.strerror})") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise OutputError(f"{part}: is a folder; give an output file name")
        if not stat.S_ISREG(mode):
            raise OutputError(f"{part}: exists and is not a regular file (a device, FIFO or "
                              "socket); geounet only replaces regular files: choose another name")
        if not overwrite:
            hint = "" if part == output else f" (a part of {output.name})"
            raise OutputError(f"{part}: already exists{hint}; pass --overwrite to replace it")
    parent = part.parent if str(part.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{parent}: output folder does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: output folder is not writable")
    try:   # the test that counts (a read-only mount, /proc): make a file there and remove it
        temporary_sibling(part).unlink()
    except OSError as exc:
        raise OutputError(f"{parent}: output folder cannot hold new files "
                          f"({exc.strerror})") from None


# -- temporary names ---------------------------------------------------------------------
def temporary_sibling(path: Path, extension: str | None = None, create: bool = True) -> Path:
    """A uniquely named hidden path beside ``path``, ending in ``extension`` (default:
    ``path``'s own), e.g. ``.out.gpkg.geounet-1a2b-4242-0f3e5d7c.tif`` for a temporary mask
    kept for the polygons of ``out.gpkg``.

    With ``create`` the file is made (empty) so the name is reserved; drivers that refuse
    to write over a file (GeoPackage, Shapefile) get ``create=False``.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    extension = path.suffix if extension is None else extension
    if extension.lower() == ".shp":   # GDAL writes the parts of 'x.SHP' as x.shp, x.dbf...
        extension = ".shp"
    while True:
        name = (f".{path.name}.{TEMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
                f"{extension}")
        tmp = parent / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        if not create:
            tmp.unlink()
        return tmp


def temporary_parts(tmp: Path) -> list[Path]:
    """Every file a driver may have written for the temporary ``tmp`` (by exact name)."""
    parts = output_parts(tmp)
    return parts + [tmp.with_name(tmp.name + ext) for ext in GDAL_SIDECARS]


def temporary_owner(name: str, output_name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that made ``name`` as a temporary of ``output_name``
    (both plain file names), or ``None`` when ``name`` is not one of ours."""
    prefix = f".{output_name}.{TEMP_MARK}"
    # A temporary of a temporary (of a kept mask, a Dask region, the compact rewrite of
    # either) has one more leading dot per level.
    while not name.startswith(prefix) and name.startswith(".."):
        name = name[1:]
    if not name.startswith(prefix):
        return None
    found = _TEMP_REST.match(name[len(prefix):])
    return (found.group(1), int(found.group(2))) if found else None


def remove_stale_temporaries(outputs: Sequence[Path], any_process: bool = False) -> int:
    """Delete temporaries of ``outputs`` left by killed geounet processes; return how many.

    By default only those of processes of this host that no longer run; ``any_process``
    (for a caller holding a lock that excludes every other writer) deletes all of them.
    Only regular files whose names follow this module's scheme are touched. Each folder is
    listed once, however many of the outputs lie in it.
    """
    folders: dict[Path, set[str]] = {}
    for output in outputs:
        output = Path(output)
        parent = output.parent if str(output.parent) else Path(".")
        folders.setdefault(parent, set()).add(output.name)
    removed = 0
    for parent, names in folders.items():
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            owner = _owner_in(entry.name, names)
            if owner is None or not entry.is_file(follow_symlinks=False):
                continue
            if not any_process and (owner[0] != _HOST or _alive(owner[1])):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


def _owner_in(name: str, output_names: set[str]) -> tuple[str, int] | None:
    """:func:`temporary_owner` of ``name`` for the first of ``output_names`` it is a
    temporary of, or ``None``. Only the names ``name`` could be a temporary of are tried
    (what lies between its leading dots and a ``.geounet-``), each one set lookup, so a
    folder is matched against all its outputs in one pass."""
    mark = "." + TEMP_MARK
    dots = len(name) - len(name.lstrip("."))
    end = name.find(mark, 1)
    while end > 0:
        for start in range(1, min(dots, end) + 1):
            if name[start:end] in output_names:
                owner = temporary_owner(name, name[start:end])
                if owner is not None:
                    return owner
        end = name.find(mark, end + 1)
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- atomic writes -----------------------------------------------------------------------
@contextlib.contextmanager
def atomic_outputs(paths: Sequence[Path | None]) -> Iterator[list[Path | None]]:
    """Yield a temporary path for each of ``paths`` (``None`` stays ``None``); when the
    block ends without error, rename every temporary (and its Shapefile sidecars) onto its
    final name, else delete them all. A failed write is re-raised as one OutputError.
    """
    finals = [Path(p) if p is not None else None for p in paths]
    remove_stale_temporaries([p for p in finals if p is not None])
    temps = [temporary_sibling(p, create=False) if p is not None else None for p in finals]
    try:
        try:
            with gdal_write_errors() as errors:
                yield temps
            raise_write_errors(errors)
            for tmp in temps:
                if tmp is not None:
                    _check_complete(tmp)
                    for part in output_parts(tmp):   # as any new file (safetensors: 0600)
                        if part.exists():
                            os.chmod(part, FILE_MODE)
            for tmp, final in zip(temps, finals):
                if tmp is not None and final is not None:
                    try:
                        rename_parts(tmp, final)
                    except OSError as exc:   # e.g. a part that may not be replaced
                        raise write_failed(final, exc) from exc
        except Exception as exc:  # noqa: BLE001 - write errors come in many types
            bad = _failed_output(exc, temps, finals)
            if isinstance(exc, GeoUNetError) or bad is None:
                raise
            raise write_failed(bad, exc) from exc
    finally:
        for tmp in temps:
            if tmp is not None:
                for part in temporary_parts(tmp):
                    part.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """:func:`atomic_outputs` for one file."""
    with atomic_outputs([path]) as (tmp,):
        assert tmp is not None
        yield tmp


def rename_parts(tmp: Path, final: Path) -> None:
    """Rename a complete temporary and its Shapefile sidecars (if any) onto ``final``'s
    names: the sidecars first, the main file last (it is what readers open). When one of
    several parts cannot be replaced, the parts already replaced get their old contents back
    (kept as hard links, or copies, until the end): a Shapefile is never half old, half
    new."""
    pairs = list(zip(output_parts(tmp), output_parts(final)))
    if len(pairs) == 1:
        os.replace(tmp, final)
        return
    kept: list[tuple[Path, Path]] = []   # (final part, hard link to its old contents)
    done: list[Path] = []
    try:
        for _, target in pairs:
            if target.exists():
                old = temporary_sibling(final, target.suffix, create=False)
                try:
                    os.link(target, old)
                except OSError:   # a file system without hard links (FAT), or an immutable file
                    shutil.copy2(target, old)
                kept.append((target, old))
        for source, target in pairs[1:] + pairs[:1]:
            if source.exists():
                os.replace(source, target)
            elif target != final:   # a sidecar the driver did not write: none of an older one
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
            done.append(target)
    except BaseException:
        for target in done:
            with contextlib.suppress(OSError):
                target.unlink()
        for target, old in kept:
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise
    finally:
        for _, old in kept:
            old.unlink(missing_ok=True)


def _check_complete(tmp: Path) -> None:
    check_tiff_complete(tmp)


def _failed_output(exc: BaseException, temps: list[Path | None], finals: list[Path | None],
                   ) -> Path | None:
    """The final path whose temporary ``exc`` comes from writing, or ``None`` when ``exc``
    is not a write error (e.g. an input could not be read)."""
    chain = list(exception_chain(exc))
    for tmp, final in zip(temps, finals):
        if tmp is not None and final is not None and any(
                tmp.with_suffix("").name in str(e) for e in chain):   # any of its parts
            return final
    if any((isinstance(e, OSError) and e.errno in DISK_FULL) or says_write_failed(str(e))
           for e in chain):
        return next((f for f in finals if f is not None), None)
    return None


def says_write_failed(text: str) -> bool:
    """Whether a library's message says a write failed (or the disk is full)."""
    return "write" in text.lower() or any(os.strerror(n) in text for n in DISK_FULL)


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it, outermost first (as a traceback shows them)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (GDAL's own words, when it has them)."""
    *_, exc = exception_chain(exc)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_failed(path: Path, exc: BaseException) -> OutputError:
    """The one-line error for a write to (a temporary sibling of) ``path`` that failed.

    GDAL's GeoPackage driver reports SQLite's words with the SQL that failed: "database or
    disk is full", or, once SQLite has rolled back by itself after a failed write, a
    ROLLBACK that "failed: cannot rollback". In a file this program has just created, a
    failed statement means the file system refused a write."""
    full = any((isinstance(e, OSError) and e.errno in DISK_FULL)
               or any(os.strerror(n) in str(e) for n in DISK_FULL)
               or SQLITE_FULL in str(e) for e in exception_chain(exc))
    with contextlib.suppress(OSError):
        full = full or os.statvfs(path.parent).f_bavail == 0
    if full:
        return OutputError(f"{path}: could not be written: the disk is full; nothing was "
                           "changed there, free some space or choose another folder")
    cause = first_line(exc)
    sqlite = SQLITE_FAILED.search(cause)
    if sqlite:
        return OutputError(f"{path}: could not be written: the write failed, most likely for "
                           f"lack of space (SQLite: {sqlite.group(1)}); nothing was changed "
                           "there, free some space or choose another folder")
    return OutputError(f"{path}: could not be written: the write failed ({cause}); "
                       "nothing was changed there")


# -- checking what was written -------------------------------------------------------------
_COLLECTED: list[list[str]] = []   # the lists of the gdal_write_errors blocks now open


def raise_write_errors(errors: list[str] | None = None) -> None:
    """Raise OSError with the first write error GDAL signalled (only logged, e.g. a failed
    flush when a dataset closed) in ``errors``, or in the innermost open
    :func:`gdal_write_errors` block."""
    errors = errors if errors is not None else (_COLLECTED[-1] if _COLLECTED else [])
    if errors:
        raise OSError(errors[0])


class _WriteErrors(logging.Handler):
    """Collects the write errors GDAL signals without rasterio raising them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"GDAL signalled an error: .*msg='(.*)'", record.getMessage())
        if found and says_write_failed(found.group(1)):
            self.messages.append(found.group(1))


@contextlib.contextmanager
def gdal_write_errors() -> Iterator[list[str]]:
    """Within a rasterio environment, yield the list of GDAL write errors signalled in it.

    rasterio raises on failed block writes but only logs (at INFO) what fails when a dataset
    is closed, such as flushing its last blocks to a full disk.
    """
    logger = logging.getLogger("rasterio._env")
    saved = logger.level, logger.propagate
    if not logger.isEnabledFor(logging.INFO):  # hear INFO records without showing them
        logger.setLevel(logging.INFO)
        logger.propagate = False
    handler = _WriteErrors()
    logger.addHandler(handler)
    _COLLECTED.append(handler.messages)
    try:
        with rasterio.Env():
            yield handler.messages
    finally:
        _COLLECTED.remove(handler.messages)
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def check_tiff_complete(path: Path) -> None:
    """Raise OSError if the GeoTIFF at ``path`` misses a block (a write that failed silently,
    as GDAL's short writes on a full disk can be): every block must lie inside the file.
    Files that are not TIFFs are not checked."""
    try:
        with open(path, "rb") as file:
            if file.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                return
    except IsADirectoryError:
        return
    size = path.stat().st_size
    with rasterio.open(path) as src:
        for band in src.indexes:
            for (row, col), _ in src.block_windows(band):
                offset, length = (src.get_tag_item(f"BLOCK_{what}_{col}_{row}", "TIFF", band)
                                  for what in ("OFFSET", "SIZE"))
                if not offset or not length or int(offset) + int(length) > size:
                    raise OSError(f"the write of block ({col}, {row}) of band {band} failed")
