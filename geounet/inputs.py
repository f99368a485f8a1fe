"""Reading inputs safely: refuse, at once, a path that cannot be read to an end.

Opening a FIFO waits for a writer, a socket or device never ends or is not a file at all, and
a loop of symbolic links names no file. Every input file (raster, checkpoint, training state,
label file) is checked with :func:`require_regular_file` before it is opened, so such a path
is one clear line instead of a hang or an internal error.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path

from geounet.errors import GeoUNetError, InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def require_regular_file(path: str | Path, kind: str = "input",
                         error: type[GeoUNetError] = InputError) -> Path:
    """Return ``path`` if it is (a link to) a regular file; else raise ``error`` saying why.

    ``kind`` names what was expected in the message (``"raster"``, ``"checkpoint"``).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: is a loop of symbolic links; point it at a real {kind} "
                        "file") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise error(f"{path}: no such file") from exc
        raise error(f"{path}: cannot be read ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory; give a {kind} file")
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise error(f"{path}: is not a regular file ({what}); reading it could wait forever, "
                    f"give a {kind} file")
    return path
