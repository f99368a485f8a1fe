"""Processes beside this one while a mask is vectorized: how many polygonize its blocks, and
the helper that computes centerline skeletons.

A mask of :data:`PARALLEL_MIN_PIXELS` or more is polygonized by worker processes (see
:mod:`geounet.polygonize`). A smaller one is polygonized in this process, and its centerlines,
which cost more than its polygons (thinning, distance transforms, the skeleton graph), are
computed by one helper process on another core while this one polygonizes, scores and
measures: the :class:`SkeletonHelper`, kept for the life of this process.

The helper is started as ``python -m geounet.polygonize`` (whose main is :func:`serve`), not
by :mod:`multiprocessing`, which would run a user's script again in it when the script lacks
the ``if __name__ == "__main__":`` guard. Requests and answers travel pickled over its
standard input and output, one answer per request, in order. ``geounet vectorize`` starts it
first thing and has it work out the first block's request from the mask itself
(:meth:`SkeletonHelper.prefetch`), so its skeletons are under way while this process still
loads its libraries; the request this process then makes is answered with them when it is
the same. It runs in its own session, so Ctrl-C reaches only this process, and it ends when
its input closes, so it never outlives this process by more than the request at hand. Where
it cannot start or stops, the skeletons are computed here.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import pickle
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from geounet.centerline import Branches
    from geounet.settings import VectorizeSettings

log = logging.getLogger(__name__)

PARALLEL_MIN_PIXELS = 32_000_000   # below this, blocks are polygonized in-process
STOP_SECONDS = 2.0   # how long a closing helper may take to finish the request at hand


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def polygonizing_workers(requested: int, pixels: int, blocks: int) -> int:
    """Worker processes polygonizing a mask of ``pixels`` in ``blocks`` blocks (0: none, all
    in this process): the ``workers`` setting (1: this process), or for 0 (auto) one per CPU
    but one on masks of :data:`PARALLEL_MIN_PIXELS` or more."""
    workers = requested
    if workers == 0:
        workers = cpus() - 1 if pixels >= PARALLEL_MIN_PIXELS else 0
    elif workers == 1:
        workers = 0
    return min(workers, blocks)


def helps(requested_workers: int, pixels: int) -> bool:
    """Whether the :class:`SkeletonHelper` computes the centerlines of a mask of ``pixels``:
    with the ``workers`` setting on auto (0), a mask polygonized in this process, another
    CPU, and a Python interpreter to start it with."""
    return (requested_workers == 0 and pixels < PARALLEL_MIN_PIXELS and cpus() > 1
            and _python_executable())


def _python_executable() -> bool:
    """Whether ``sys.executable`` is a Python interpreter (in an application embedding
    Python, such as QGIS, it is the application)."""
    return Path(sys.executable).name.lower().startswith(("python", "pypy"))


class Answer:
    """Centerline branches of a request: computed here at once, or by the helper (then
    :meth:`result` waits for them, or computes them here if the helper stopped).
    ``prefetched``: the helper had them computed ahead (see the module docstring)."""

    def __init__(self, request: tuple, helper: SkeletonHelper | None = None) -> None:
        self.request: tuple | None = request
        self.helper = helper
        self.value: Branches | BaseException | None = None
        self.prefetched = False
        if helper is None:
            self.value = _compute(request)
            self.request = None

    def result(self) -> Branches:
        if self.helper is not None:
            self.helper.wait_for(self)
        value = self.value
        if isinstance(value, BaseException):
            raise value
        assert value is not None
        return value


class SkeletonHelper:
    """The helper process (see the module docstring). Thread-safe: callers in several
    threads share it, their requests answered in the order they were made."""

    def __init__(self) -> None:
        package_parent = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
        # -P: the current folder is not searched for modules (a user's skimage.py there
        # would run in the helper); before Python 3.11, the helper runs in the package's
        # folder instead
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        self.process: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, *safe_path, "-m", "geounet.polygonize"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            cwd=None if safe_path else package_parent, start_new_session=True)
        self.waiting: collections.deque[Answer] = collections.deque()
        self.lock = threading.RLock()
        self.sending: threading.Thread | None = None

    def submit(self, request: tuple) -> Answer:
        """Ask for :func:`geounet.centerline.skeleton_branches` of ``request`` (its
        arguments: shapes, spur length in pixels, corners)."""
        with self.lock:
            # the answers before are read first: a request and an answer both larger than a
            # pipe's buffer, written at once, would wait on each other
            while self.waiting:
                self._read_one()
            if self.process is None:
                return Answer(request)
            answer = Answer(request, self)
            self._send_on_the_side(("skeletons", request))
            self.waiting.append(answer)
            return answer

    def prefetch(self, mask: str | Path, settings: VectorizeSettings) -> None:
        """Have the helper compute the skeletons of the first block of ``mask`` vectorized
        with ``settings`` before they are asked for (no answer comes back)."""
        with self.lock:
            if self.process is not None:
                self._send_on_the_side(("prefetch", str(Path(mask).resolve()),
                                        settings.model_dump()))

    def _send_on_the_side(self, message: tuple) -> None:
        """Written by a thread: this process goes on while the helper takes it in (one
        message on the way at a time)."""
        if self.sending is not None:
            self.sending.join()
        assert self.process is not None
        self.sending = threading.Thread(target=self._send, args=(self.process, message),
                                        name="geounet-skeleton-request", daemon=True)
        self.sending.start()

    @staticmethod
    def _send(process: subprocess.Popen, request: tuple) -> None:
        try:
            assert process.stdin is not None
            pickle.dump(request, process.stdin, pickle.HIGHEST_PROTOCOL)
            process.stdin.flush()
        except (OSError, ValueError):   # it stopped or was closed: no answer will come
            pass

    def wait_for(self, answer: Answer) -> None:
        with self.lock:
            while answer.request is not None:
                self._read_one()

    def _read_one(self) -> None:
        """The answer to the oldest request waiting (computed here if the helper stopped)."""
        answer = self.waiting.popleft()
        assert answer.request is not None
        value: Any = None
        if self.sending is not None:   # one request on the way at a time
            self.sending.join()
            self.sending = None
        if self.process is not None:
            try:
                assert self.process.stdout is not None
                answer.prefetched, value = pickle.load(self.process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                self._stopped()
        answer.value = value if self.process is not None else _compute(answer.request)
        answer.request = None

    def _stopped(self) -> None:
        if self.process is not None:
            log.debug("the skeleton helper process stopped (exit status %s); computing "
                      "skeletons in this process", self.process.poll())
            self.close()

    def close(self, wait: bool = True) -> None:
        """End the helper: its input closes, it finishes the request at hand (stopped after
        :data:`STOP_SECONDS`; ``wait``: this process waits for it to end)."""
        process, self.process = self.process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if not wait:
            return
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _compute(request: tuple) -> Branches | BaseException:
    from geounet.centerline import skeleton_branches

    try:
        return skeleton_branches(*request)
    except Exception as exc:   # raised where the answer is asked for
        return exc


_helper: SkeletonHelper | None = None
_helper_lock = threading.Lock()


def skeleton_helper() -> SkeletonHelper | None:
    """The helper process of this process, started on first use; None when it cannot
    start."""
    global _helper
    with _helper_lock:
        if _helper is None:
            try:
                _helper = SkeletonHelper()
            except OSError as exc:
                log.debug("no skeleton helper process (%s): skeletons computed here", exc)
                return None
        return _helper if _helper.process is not None else None


def _close_helper() -> None:
    """The helper's input closes; it ends on its own (not waited for): at exit, and when a
    helper started ahead will not be used."""
    if _helper is not None:
        _helper.close(wait=False)


atexit.register(_close_helper)


def _forget_helper() -> None:
    """In a child forked from this process: the helper is the parent's (its pipes are
    closed here; the child starts its own if it needs one)."""
    global _helper, _helper_lock
    _helper_lock = threading.Lock()
    helper, _helper = _helper, None
    if helper is not None and helper.process is not None:
        # closed without flushing (a request half-written by another thread at the fork must
        # not be sent twice); the objects are kept, so that they never close the numbers again
        _inherited.append(helper)
        for stream in (helper.process.stdin, helper.process.stdout):
            try:
                if stream is not None:
                    os.close(stream.fileno())
            except (OSError, ValueError):
                pass


_inherited: list[SkeletonHelper] = []


os.register_at_fork(after_in_child=_forget_helper)


def start_skeleton_helper() -> None:
    """Start the helper now, if one can run here (see :func:`prestart_skeleton_helper`)."""
    if cpus() > 1 and _python_executable():
        skeleton_helper()


def prestart_skeleton_helper(mask: str | Path, settings: VectorizeSettings) -> None:
    """Have the helper compute the first block's skeletons of ``mask`` vectorized with
    ``settings`` ahead (see the module docstring), starting it if needed, when it will be
    used; else end a helper started ahead of knowing (:func:`start_skeleton_helper`). A
    mask that cannot be read is left to the command to report."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(mask) as src:
            pixels = src.width * src.height
    except (RasterioError, OSError):
        pixels = None
    if pixels is not None and settings.centerlines and helps(settings.workers, pixels):
        helper = skeleton_helper()
        if helper is not None:
            helper.prefetch(mask, settings)
    else:
        _close_helper()


def serve(first_block_request: Callable[[str, VectorizeSettings], tuple | None]) -> None:
    """The helper's loop: a pickled request in, its pickled answer out, until the input
    closes. ``first_block_request(mask, settings)``: the request that vectorizing ``mask``
    with ``settings`` makes for its first block (computed ahead when asked to prefetch)."""
    import skimage.morphology  # noqa: F401  (loaded before the first request)

    source, sink = sys.stdin.buffer, sys.stdout.buffer
    ahead: tuple[tuple, Branches | BaseException] | None = None   # a request and its answer
    while True:
        try:
            kind, *message = pickle.load(source)
        except EOFError:
            return
        if kind == "prefetch":
            ahead = _prefetched(first_block_request, *message)
            continue
        request = message[0]
        prefetched = ahead is not None and _same_request(ahead[0], request)
        answer = ahead[1] if ahead is not None and prefetched else _compute(request)
        ahead = None
        if isinstance(answer, BaseException):
            try:
                pickle.dumps(answer)
            except Exception:   # an exception that does not pickle: its words do
                answer = RuntimeError(f"{type(answer).__name__}: {answer}")
        try:
            pickle.dump((prefetched, answer), sink, pickle.HIGHEST_PROTOCOL)
            sink.flush()
        except OSError:   # this process's parent is gone (a broken pipe)
            return


def _prefetched(first_block_request: Callable[[str, VectorizeSettings], tuple | None],
                mask: str, settings: dict) -> tuple[tuple, Branches | BaseException] | None:
    """The first block's request for vectorizing ``mask`` with ``settings``, and its
    answer; None when it cannot be worked out (the command reports what is wrong)."""
    # the values as attributes: pydantic, a tenth of a second to load, is not needed here
    values = cast("VectorizeSettings", types.SimpleNamespace(**settings))
    try:
        request = first_block_request(mask, values)
    except Exception:   # noqa: BLE001 - only ever a guess ahead
        return None
    return None if request is None else (request, _compute(request))


def _same_request(a: tuple, b: tuple) -> bool:
    """Whether two skeleton requests (shapes, spur length, corners) are the same."""
    import numpy as np

    (shapes_a, spur_a, corners_a), (shapes_b, spur_b, corners_b) = a, b
    return (spur_a == spur_b and np.array_equal(corners_a, corners_b)
            and len(shapes_a) == len(shapes_b)
            and all(np.array_equal(x, y) for x, y in zip(shapes_a, shapes_b)))

