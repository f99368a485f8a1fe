"""Checkpoints never run code; bad checkpoints and bad CLI input give one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geounet.checkpoint import ModelMetadata, load_checkpoint, read_metadata, save_checkpoint
from geounet.errors import ModelError
from geounet.model import UNet, UNetConfig

GEOUNET = [sys.executable, "-m", "geounet"]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    torch.save({"state_dict": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(ModelError, match="not a readable geounet checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_round_trip_keeps_predictions_and_metadata(tmp_path, tiny_model):
    path = tiny_model()
    model, meta = load_checkpoint(path)
    again = save_checkpoint(tmp_path / "again.safetensors", model, meta)
    model2, meta2 = load_checkpoint(again)
    x = torch.randn(1, 3, 40, 52)
    with torch.inference_mode():
        assert torch.equal(model(x), model2(x))
    assert meta2 == meta == read_metadata(path)


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path, tiny_model):
    path = tiny_model()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelError):
        load_checkpoint(cut)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelError, match="not a geounet checkpoint"):
        load_checkpoint(plain)


def test_weights_of_another_architecture_are_refused(tmp_path):
    small, big = UNetConfig(3, 1, 4, 2), UNetConfig(3, 1, 8, 2)
    meta = ModelMetadata(big, (1, 2, 3), (0.0,) * 3, (1.0,) * 3, ("bg", "fg"))
    tensors = {k: v.contiguous() for k, v in UNet(small).state_dict().items()}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path, metadata={"format": "geounet-checkpoint", "version": "1",
                                       "geounet": meta.to_json()})
    with pytest.raises(ModelError, match="do not fit the declared architecture"):
        load_checkpoint(path)


def _run(*args, cwd=None):
    return subprocess.run([*GEOUNET, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_predict_and_info(rgb, tiny_model, tmp_path):
    model = tiny_model()
    out = tmp_path / "cli_mask.tif"
    done = _run("predict", rgb, "-m", model, "-o", out, "-q", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["size"] == [223, 150] and out.exists()
    info = json.loads(_run("info", model).stdout)
    assert info["bands"] == [1, 2, 3]


def test_cli_errors_are_one_line(rgb, tiny_model, tmp_path, make_raster):
    model = tiny_model()
    not_raster = tmp_path / "text.tif"
    not_raster.write_text("no")
    four = make_raster(np.zeros((4, 20, 20), np.uint8), name="four.tif")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    torch.save(_Payload(marker), evil)
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"x")
    cases = {
        "no such file": ("predict", tmp_path / "missing.tif", "-m", model, "-o", "a.tif"),
        "not a readable raster": ("predict", not_raster, "-m", model, "-o", "b.tif"),
        "--bands": ("predict", four, "-m", model, "-o", "c.tif"),
        "no such checkpoint": ("predict", rgb, "-m", tmp_path / "none.safetensors", "-o",
                               "d.tif"),
        "refused because loading them can run code": ("predict", rgb, "-m", evil, "-o",
                                                      "e.tif"),
        "--overwrite": ("predict", rgb, "-m", model, "-o", existing),
    }
    for needle, args in cases.items():
        done = _run(*args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (needle, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("geounet: error:"), done.stderr
        assert needle in lines[0]
        assert "Traceback" not in done.stderr
    assert not marker.exists()
    assert {p.name for p in tmp_path.glob("*.tif")} == {"in.tif", "text.tif", "four.tif",
                                                          "exists.tif"}
