"""The state of an output folder: what is done (a manifest of content hashes), who writes it
(a lock), and what killed runs left (temporaries, a staging folder).

Idempotence comes from a manifest of content hashes kept next to the outputs
(:data:`MANIFEST`): for each input, the sha256 of its bytes, of the checkpoint and of the
output-relevant settings. An item whose three hashes match a finished entry, and whose
outputs are all still there, is skipped without loading the model; changing an input's content
(not merely its mtime) reprocesses that item only.

Crash safety: an item is recorded as ``running`` before its first output is written and as
``done`` after its last, and the manifest itself is replaced atomically. A killed run
therefore leaves only hidden temporary files (removed by the next run,
:func:`remove_stale_temporaries`) and finished outputs; the next run redoes the unfinished
items, replacing their outputs.

Concurrency: a run holds an exclusive ``flock`` on :data:`LOCK` in the output folder for its
whole duration (:func:`output_lock`), so two runs never process the same outputs at once; the
second one waits (``wait`` seconds) or stops with a clear message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from geounet.errors import OutputError
from geounet.outputs import atomic_path, required_parts
from geounet.outputs import remove_stale_temporaries as remove_output_temporaries
from geounet.workflow.summary import ItemSummary

# The files a workflow keeps in its output folder besides the outputs.
MANIFEST = ".geounet_manifest.json"
LOCK = ".geounet.lock"
REPORT = "run_report.json"
HTML_REPORT = "report.html"
# Where Dask workers write an item's outputs before the run renames them into place.
STAGING = ".geounet.staging"
HASH_CHUNK = 1 << 20


class Recorded(Protocol):
    """What the manifest keeps of an item: its input and output paths (absolute; ``None``:
    not written). :class:`geounet.workflow.plan.Item` is one."""

    @property
    def input(self) -> Path: ...

    @property
    def outputs(self) -> Mapping[str, Path | None]: ...


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest:
    """Content hashes and states of the items of one output folder, saved atomically."""

    def __init__(self, folder: Path):
        self.path = folder / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        self.model: dict[str, Any] = {}   # sha256 and class names of the last model used
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                self.entries, self.model = saved["items"], saved.get("model", {})
                _check_entries(self.entries, self.model)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                why = f"no {exc.args[0]!r} key" if isinstance(exc, KeyError) else str(exc)
                raise OutputError(f"{self.path}: unreadable manifest ({why}); delete it and "
                                  "run once with outputs.overwrite: always to redo every "
                                  "item") from None

    def owned(self) -> set[Path]:
        """Every output any entry (finished or not) has written or was about to write."""
        folder = self.path.parent
        return {folder / p for e in self.entries.values() for p in e["outputs"].values() if p}

    def is_current(self, item: Recorded, hashes: dict[str, str]) -> bool:
        entry = self.entries.get(str(item.input))
        return (entry is not None and entry["state"] == "done"
                and all(entry.get(k) == v for k, v in hashes.items())
                and entry["outputs"] == self._names(item)
                and all(part.exists() for p in filter(None, item.outputs.values())
                        for part in required_parts(p)))

    def why_stale(self, item: Recorded, hashes: dict[str, str]) -> str:
        entry = self.entries.get(str(item.input))
        if entry is None:
            return "new input"
        if entry["state"] != "done":
            return "unfinished by an earlier run"
        for key, what in (("input_sha256", "input content"), ("model_sha256", "model"),
                          ("settings_sha256", "settings")):
            if entry.get(key) != hashes[key]:
                return f"{what} changed"
        return "outputs changed or missing"

    def record(self, item: Recorded, hashes: dict[str, str], state: str,
               summary: ItemSummary | None = None, save: bool = True) -> None:
        self.entries[str(item.input)] = {**hashes, "state": state,
                                         "outputs": self._names(item), "summary": summary}
        if save:
            self.save()

    def summary(self, item: Recorded) -> ItemSummary | None:
        return self.entries.get(str(item.input), {}).get("summary")

    def save(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            json.dump({"version": 1, "model": self.model, "items": self.entries}, f,
                      indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    def _names(self, item: Recorded) -> dict[str, str | None]:
        return {k: (os.path.relpath(p, self.path.parent) if p else None)
                for k, p in item.outputs.items()}


def _check_entries(entries: Any, model: Any) -> None:
    """Raise ValueError naming what is wrong when a manifest's entries are not the mappings
    :class:`Manifest` reads (hand-edited, or written by something else)."""
    if not isinstance(entries, dict) or not isinstance(model, dict):
        raise ValueError("'items' and 'model' must be mappings")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"the entry of {name} is not a mapping")
        for key, kind in (("state", str), ("outputs", dict)):
            if not isinstance(entry.get(key), kind):
                raise ValueError(f"the entry of {name} has no valid {key!r}")
        if not all(isinstance(p, (str, type(None))) for p in entry["outputs"].values()):
            raise ValueError(f"the entry of {name} has an output that is not a file name")
    if "class_names" in model and not isinstance(model["class_names"], list):
        raise ValueError("'model.class_names' must be a list")


@contextlib.contextmanager
def output_lock(folder: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s outputs; wait up to ``wait`` seconds for it."""
    path = folder / LOCK
    fd = _open_lock(path)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise OutputError(
                        f"{folder}: another geounet run (pid {holder}) is writing these outputs;"
                        " let it finish, or pass --wait SECONDS to wait for it") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock


def _open_lock(path: Path) -> int:
    """Open (or create) the lock file; never through a symlink, never anything but a regular
    file (a planted ``.geounet.lock -> someone's file`` would be truncated otherwise)."""
    refuse = OutputError(f"{path}: the lock file is not a regular file (a symlink, folder or "
                         "device); remove it, geounet makes its own")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise refuse from None
        raise OutputError(f"{path}: cannot open the lock file ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse
    return fd


def remove_staging(folder: Path) -> None:
    """Delete ``folder``'s staging folder (:data:`STAGING`, see
    :class:`geounet.workflow.dask.Staging`) with what the Dask tasks of killed runs left in it;
    call it holding the lock. Anything but a real folder there is refused, never followed or
    deleted."""
    path = folder / STAGING
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{path}: is not a folder geounet made (a symlink or a file); "
                          "remove it")
    for _ in range(10):   # a task of a killed run may still be adding files to it
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.2)
    raise OutputError(f"{path}: cannot be removed (a task of an earlier run still writing, or "
                      "no permission); stop that run's Dask tasks and retry")


def remove_stale_temporaries(items: Iterable[Recorded], folder: Path | None = None) -> int:
    """Delete hidden temporary files left beside outputs (and the manifest and report of
    ``folder``) by a killed run; call it holding the lock."""
    targets = [t for item in items for t in item.outputs.values() if t is not None]
    if folder is not None:
        targets += [folder / MANIFEST, folder / REPORT, folder / HTML_REPORT]
    return remove_output_temporaries(targets, any_process=True)

