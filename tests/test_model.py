"""The U-Net: any input size in, same size out; the classic configuration; config checks."""

from __future__ import annotations

import pytest
import torch

from geounet.errors import ConfigError, GeoUNetError
from geounet.model import UNet, UNetConfig, logits_to_probabilities

SIZES = [(1, 1), (1, 2), (2, 1), (1, 37), (37, 1), (3, 3), (4, 4), (5, 7), (16, 16),
         (17, 31), (33, 65), (64, 3), (100, 99)]


@pytest.fixture(scope="module")
def models():
    out = {}
    for bilinear in (True, False):
        for depth in (2, 3):
            torch.manual_seed(0)
            out[bilinear, depth] = UNet(UNetConfig(3, 2, 4, depth, bilinear)).eval()
    return out


@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_output_has_the_input_size(models, bilinear, depth, size):
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y = models[bilinear, depth](x)
    assert y.shape == (2, 2, *size)
    assert torch.isfinite(y).all()


def test_one_pixel_input_gives_the_prediction_of_a_uniform_patch(models):
    """A 1x1 input is edge-padded: its logits equal those at a uniform patch of its value."""
    model = models[True, 2]
    x = torch.randn(1, 3, 1, 1)
    with torch.inference_mode():
        single = model(x)
        uniform = model(x.expand(1, 3, 4, 4).contiguous())
    assert torch.allclose(single[..., 0, 0], uniform[..., 0, 0], atol=1e-6)


@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
def test_shift_by_the_deepest_cell_shifts_the_output(bilinear):
    """Tiles at any offset multiple of 2**depth see the same function (no tile seams)."""
    torch.manual_seed(1)
    model = UNet(UNetConfig(3, 1, 4, 2, bilinear)).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        shifted = model(x[..., 4:, 4:])
        whole = model(x)[..., 4:, 4:]
    # Away from the borders (zero padding differs there) the outputs agree.
    inner = (..., slice(20, -20), slice(20, -20))
    assert (shifted[inner] - whole[inner]).abs().max() < 1e-5


def _double_conv(cin: int, cout: int, mid: int | None = None) -> int:
    """Two bias-free 3x3 convs, each followed by a BatchNorm (weight and bias)."""
    mid = mid or cout
    return cin * mid * 9 + 2 * mid + mid * cout * 9 + 2 * cout


def _classic_bilinear(cin: int, classes: int) -> int:
    encoder = (_double_conv(cin, 64) + _double_conv(64, 128) + _double_conv(128, 256)
               + _double_conv(256, 512) + _double_conv(512, 512))
    decoder = (_double_conv(1024, 256, 512) + _double_conv(512, 128, 256)
               + _double_conv(256, 64, 128) + _double_conv(128, 64, 64))
    return encoder + decoder + 64 * classes + classes


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_classic_configuration_has_the_milesial_parameter_count():
    """Width 64, depth 4, bilinear, 3 bands, 1 class: milesial/Pytorch-UNet's UNet(3, 1).

    Counted by hand from the architecture (bias-free convs before BatchNorm, Up stages with
    ``in // 2`` middle channels, a 1x1 output conv): 17,262,977. The figure 17,266,241
    sometimes quoted does not match this architecture (3,264 more parameters).
    """
    assert _classic_bilinear(3, 1) == 17_262_977
    assert _count(UNet(UNetConfig(3, 1, 64, 4, True))) == 17_262_977


def test_classic_transposed_configuration_parameter_count():
    """The transposed-convolution U-Net(3, 1) has the well-known 31,037,633 parameters."""
    assert _count(UNet(UNetConfig(3, 1, 64, 4, False))) == 31_037_633


@pytest.mark.parametrize("field,value", [
    ("in_channels", 0), ("classes", 0), ("width", 0), ("depth", 0), ("width", -4),
    ("depth", 2.0), ("width", "8"), ("classes", None),
])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        UNetConfig(**{field: value})
    assert repr(value) in str(info.value)
    # Callers who do not know geounet can catch the builtin.
    assert isinstance(info.value, ValueError) and isinstance(info.value, GeoUNetError)


def test_config_round_trips_through_a_dict():
    config = UNetConfig(4, 3, 8, 3, False)
    assert config.to_dict() == {"in_channels": 4, "classes": 3, "width": 8, "depth": 3,
                                "bilinear": False}
    assert UNetConfig(**config.to_dict()) == config


def test_probabilities_sigmoid_for_one_channel_softmax_for_several():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    assert torch.allclose(logits_to_probabilities(logits), torch.sigmoid(logits))
    multi = torch.randn(2, 3, 5, 6)
    probs = logits_to_probabilities(multi)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 5, 6), atol=1e-6)
    assert torch.equal(probs.argmax(dim=1), multi.argmax(dim=1))
