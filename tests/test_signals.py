"""SIGTERM and Ctrl-C in the middle of a write: the command says so in one line, exits with
the shell's status for the signal, and leaves no output or temporary behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_hostile import noise, tiny_checkpoint, write_raster


def _wait_for_temporary(folder: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if any(".geounet-" in p.name for p in folder.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before writing: {proc.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no temporary appeared")


@pytest.mark.parametrize("signum,status,word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_mid_predict_leaves_nothing(tmp_path, signum, status, word):
    image = write_raster(tmp_path / "image.tif", noise((3, 1024, 1024)))
    model = tiny_checkpoint(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geounet", "predict", image, "-m", model, "-o", out / "m.tif",
         "--vector", out / "v.gpkg", "--threads", "1", "-q"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    _wait_for_temporary(out, proc)
    os.kill(proc.pid, signum)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10, "the signal was not acted on promptly"
    print(f"exit {time.monotonic() - sent:.2f} s after the signal")
    assert proc.returncode == status, stderr
    assert stderr.strip().splitlines() == [
        f"geounet: {word}; no output was left at the destination"]
    assert list(out.iterdir()) == []
    assert np.all([p.exists() for p in (image, model)])


@pytest.mark.parametrize("signum,status,word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_an_interrupt_a_library_reports_as_its_error_is_still_the_interrupt(
        tmp_path, monkeypatch, signum, status, word):
    """GDAL reading Arrow batches turns an interrupt raised in the batch stream into its
    own "Error while accessing batch from stream": that was reported as a failed write
    (exit 1). The signal is remembered, so it is reported as what it was, nothing left."""
    import pyogrio
    from click.testing import CliRunner

    from geounet.cli import main

    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 5:20, 5:30] = 1
    path = write_raster(tmp_path / "mask.tif", mask)

    def swallowing_write(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(1)   # the handler raises here
        except BaseException:   # noqa: BLE001 - as the library does
            pass
        raise RuntimeError("Error while accessing batch from stream.")

    monkeypatch.setattr(pyogrio, "write_arrow", swallowing_write)
    result = CliRunner().invoke(main, ["vectorize", str(path), "-o", str(tmp_path / "v.gpkg")])
    assert result.exit_code == status, result.output
    assert result.stderr.strip() == f"geounet: {word}; no output was left at the destination"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]
