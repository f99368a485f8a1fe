"""Checkpoints: weights and metadata survive a round trip; nothing else is ever loaded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geounet.checkpoint import (
    FORMAT,
    ModelMetadata,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from geounet.errors import ModelError
from geounet.model import UNet, UNetConfig

ARCH = UNetConfig(3, 1, 4, 2)


def _tensors(model: UNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _raw_checkpoint(path: Path, tensors: dict, **header: str) -> Path:
    save_file(tensors, str(path), metadata=header)
    return path


class _Payload:
    """Unpickling this object opens (creates) ``marker``: the classic pickle exploit."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_round_trip_keeps_weights_buffers_and_metadata(tmp_path, make_unet, make_metadata):
    model = make_unet(ARCH, seed=3)
    meta = make_metadata(ARCH, tile=96, overlap=24, names=("soil", "crack"))
    meta = dataclasses.replace(meta, threshold=0.35, source={"name": "tiny", "seed": "3"})
    path = save_checkpoint(tmp_path / "sub" / "m.safetensors", model, meta)

    loaded, meta2 = load_checkpoint(path)
    assert not loaded.training  # eval mode: BatchNorm uses the stored running statistics
    assert meta2 == meta
    assert read_metadata(path) == meta
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(2, 3, 37, 51)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    # Only the checkpoint is left in the folder: the temporary file was renamed into place.
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]


def test_saving_again_replaces_the_checkpoint(tmp_path, make_unet, make_metadata):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_unet(ARCH, seed=1), make_metadata(ARCH))
    second = make_unet(ARCH, seed=2)
    save_checkpoint(path, second, make_metadata(ARCH, tile=128))
    loaded, meta = load_checkpoint(path)
    assert meta.tile_size == 128
    assert torch.equal(loaded.outc.weight, second.outc.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_model_and_metadata_must_agree_when_saving(tmp_path, make_unet, make_metadata):
    other = UNetConfig(3, 1, 8, 2)
    with pytest.raises(ModelError, match="does not match"):
        save_checkpoint(tmp_path / "m.safetensors", make_unet(ARCH), make_metadata(other))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [0, 7, 8, 100, 300, -100, -1])
def test_truncated_checkpoint_is_refused(tmp_path, checkpoint, keep):
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(ModelError, match="cut.safetensors"):
        load_checkpoint(cut)


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")
    with pytest.raises(ModelError, match="no such checkpoint"):
        read_metadata(tmp_path / "none.safetensors")


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    torch.save({"state_dict": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(ModelError, match="pickled .pt/.pth files are refused"):
        load_checkpoint(evil)
    with pytest.raises(ModelError):
        read_metadata(evil)
    assert not marker.exists()


def test_the_pickle_payload_is_live(tmp_path):
    """Control for the test above: unpickling the same construction does create the marker."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_weights_of_another_width_are_refused(tmp_path, make_unet, make_metadata):
    declared = UNetConfig(3, 1, 8, 2)
    path = _raw_checkpoint(tmp_path / "mixed.safetensors", _tensors(make_unet(ARCH)),
                           format=FORMAT, version="1",
                           geounet=make_metadata(declared).to_json())
    with pytest.raises(ModelError, match="do not fit the declared architecture"):
        load_checkpoint(path)
    # The metadata alone is readable (that is what `geounet info` shows).
    assert read_metadata(path).arch == declared


@pytest.mark.parametrize("declared", [UNetConfig(3, 1, 4, 3), UNetConfig(3, 1, 4, 2, False),
                                      UNetConfig(4, 1, 4, 2), UNetConfig(3, 2, 4, 2)],
                         ids=["deeper", "transposed", "more-bands", "more-classes"])
def test_weights_of_another_architecture_are_refused(tmp_path, make_unet, make_metadata,
                                                     declared):
    path = _raw_checkpoint(tmp_path / "mixed.safetensors", _tensors(make_unet(ARCH)),
                           format=FORMAT, version="1",
                           geounet=make_metadata(declared).to_json())
    with pytest.raises(ModelError, match="mixed.safetensors.*declared architecture"):
        load_checkpoint(path)


def test_missing_tensor_is_refused(tmp_path, make_unet, make_metadata):
    tensors = _tensors(make_unet(ARCH))
    del tensors["outc.bias"]
    path = _raw_checkpoint(tmp_path / "m.safetensors", tensors, format=FORMAT, version="1",
                           geounet=make_metadata(ARCH).to_json())
    with pytest.raises(ModelError, match="outc.bias"):
        load_checkpoint(path)


@pytest.mark.parametrize("header,needle", [
    ({}, "not a geounet checkpoint"),
    ({"format": "other-checkpoint", "version": "1"}, "not a geounet checkpoint"),
    ({"format": FORMAT, "version": "2"}, "version '2'"),
    ({"format": FORMAT}, "version None"),
    ({"format": FORMAT, "version": "1"}, "missing or corrupt"),
    ({"format": FORMAT, "version": "1", "geounet": "{not json"}, "missing or corrupt"),
    ({"format": FORMAT, "version": "1", "geounet": '{"arch": {}}'}, "'bands' is missing"),
    ({"format": FORMAT, "version": "1", "geounet": "[]"}, None),
])
def test_wrong_header_is_refused(tmp_path, make_unet, make_metadata, header, needle):
    meta = make_metadata(ARCH).to_json()
    if header.get("format") == FORMAT and header.get("version") != "1":
        header = {**header, "geounet": meta}
    path = _raw_checkpoint(tmp_path / "m.safetensors", _tensors(make_unet(ARCH)), **header)
    with pytest.raises(ModelError, match=needle):
        load_checkpoint(path)
    with pytest.raises(ModelError, match=needle):
        read_metadata(path)


@pytest.mark.parametrize("text", ["null", '"geounet"', "5"])
def test_metadata_that_is_not_an_object_is_refused(tmp_path, make_unet, text):
    path = _raw_checkpoint(tmp_path / "m.safetensors", _tensors(make_unet(ARCH)),
                           format=FORMAT, version="1", geounet=text)
    with pytest.raises(ModelError):
        load_checkpoint(path)


def test_invalid_declared_architecture_is_a_model_error(tmp_path, make_unet, make_metadata):
    raw = json.loads(make_metadata(ARCH).to_json())
    raw["arch"]["width"] = 0
    path = _raw_checkpoint(tmp_path / "m.safetensors", _tensors(make_unet(ARCH)),
                           format=FORMAT, version="1", geounet=json.dumps(raw))
    with pytest.raises(ModelError, match="m.safetensors"):
        load_checkpoint(path)


@pytest.mark.parametrize("change,needle", [
    ({"bands": (1, 2)}, "3 input channels but 2 bands"),
    ({"mean": (0.0,) * 4}, "4 means"),
    ({"std": (1.0, 0.0, 1.0)}, "'std': must be positive"),
    ({"class_names": ("only",)}, "1 class names for 2 classes"),
    ({"nodata_policy": "zero"}, "unknown nodata policy"),
])
def test_inconsistent_metadata_is_refused(make_metadata, change, needle):
    with pytest.raises(ModelError, match=needle):
        dataclasses.replace(make_metadata(ARCH), **change)


def test_metadata_json_round_trip_and_content(make_metadata):
    meta = make_metadata(UNetConfig(4, 3, 8, 3, False), tile=256, overlap=32)
    raw = json.loads(meta.to_json())
    assert raw["arch"] == {"in_channels": 4, "classes": 3, "width": 8, "depth": 3,
                           "bilinear": False}
    assert raw["bands"] == [1, 2, 3, 4] and raw["class_names"] == ["c0", "c1", "c2"]
    assert (raw["tile_size"], raw["overlap"], raw["nodata_policy"]) == (256, 32, "mask")
    assert ModelMetadata.from_json(meta.to_json()) == meta


def test_weights_with_nan_are_refused(tmp_path, make_unet, make_metadata):
    tensors = _tensors(make_unet(ARCH))
    tensors["ups.0.conv.block.1.running_var"][2] = float("nan")
    path = _raw_checkpoint(tmp_path / "m.safetensors", tensors, format=FORMAT, version="1",
                           geounet=make_metadata(ARCH).to_json())
    with pytest.raises(ModelError, match="'ups.0.conv.block.1.running_var' holds NaN"):
        load_checkpoint(path)


def test_weights_are_compared_with_the_architecture_before_it_is_built(
        tmp_path, make_unet, make_metadata, monkeypatch):
    """The declared architecture's shapes come from the meta device: no UNet is allocated
    for a checkpoint whose weights do not fit it."""
    built = []
    monkeypatch.setattr("geounet.checkpoint.UNet", lambda arch: built.append(arch))
    declared = UNetConfig(3, 1, 1024, 8)  # 10^12 weights if it were built
    path = _raw_checkpoint(tmp_path / "m.safetensors", _tensors(make_unet(ARCH)),
                           format=FORMAT, version="1", geounet=make_metadata(declared).to_json())
    with pytest.raises(ModelError, match=r"'inc.block.0.weight' is \[4, 3, 3, 3\], the "
                                         r"architecture needs \[1024, 3, 3, 3\]"):
        load_checkpoint(path)
    assert built == []


@pytest.mark.parametrize("dtype,needle", [(torch.int32, "I32, the architecture needs floating"),
                                          (torch.float16, None)])
def test_weight_types_are_checked(tmp_path, make_unet, make_metadata, dtype, needle):
    tensors = _tensors(make_unet(ARCH))
    tensors["outc.weight"] = tensors["outc.weight"].to(dtype)
    path = _raw_checkpoint(tmp_path / "m.safetensors", tensors, format=FORMAT, version="1",
                           geounet=make_metadata(ARCH).to_json())
    if needle is None:  # half precision weights load (as float32)
        assert load_checkpoint(path)[0].outc.weight.dtype == torch.float32
        return
    with pytest.raises(ModelError, match=f"'outc.weight' is {needle}"):
        load_checkpoint(path)
