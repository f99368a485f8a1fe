"""The classic U-Net (Ronneberger et al., 2015) in four small parts and one assembly.

Encoder: :class:`DoubleConv` then ``depth`` :class:`Down` stages (2x2 max-pool + DoubleConv),
doubling the channels each time. Decoder: ``depth`` :class:`Up` stages (bilinear upsampling or
a transposed conv, pad to the skip's size, concatenate, DoubleConv), then a 1x1 conv to
``classes`` logits. Any input height and width is accepted: odd sizes are padded in ``Up``.
With ``classes == 1`` the single logit is a binary foreground score (sigmoid); otherwise the
logits are per class (softmax).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from geounet.errors import ConfigError

# Largest integer architecture arguments accepted (bilinear is a flag). Depth 8 already pools
# 256x; width 1024 is 16x the classic U-Net (4x10^9 weights at depth 4); the uint8 mask holds
# class ids 0..254.
ARGUMENT_LIMITS = {"in_channels": 4096, "classes": 254, "width": 1024, "depth": 8}


def argument_problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the :class:`UNetConfig` field ``name``, or None."""
    if name == "bilinear":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    limit = ARGUMENT_LIMITS[name]
    if not 1 <= value <= limit:
        return f"must be 1..{limit}, got {value}"
    return None


@dataclass(frozen=True)
class UNetConfig:
    """Architecture arguments; stored in every checkpoint.

    Attributes:
        in_channels: number of input bands.
        classes: output channels (1 = binary with sigmoid, >= 2 = softmax over classes).
        width: channels of the first stage (64 is the classic U-Net; 8-32 suit CPUs).
        depth: number of 2x2 poolings (4 is the classic U-Net).
        bilinear: bilinear upsampling (True) or transposed convolutions (False).
    """

    in_channels: int = 3
    classes: int = 1
    width: int = 64
    depth: int = 4
    bilinear: bool = True

    def __post_init__(self) -> None:
        for field in fields(self):
            problem = argument_problem(field.name, getattr(self, field.name))
            if problem:
                raise ConfigError(f"UNet {field.name} {problem}")

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class DoubleConv(nn.Module):
    """(3x3 conv => BatchNorm => ReLU) twice; spatial size unchanged."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool then DoubleConv: halves height and width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """Upsample x2, pad to the skip's size, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool):
        super().__init__()
        if bilinear:
            # align_corners=False keeps the network shift-equivariant, so a tile and the whole
            # raster give the same prediction for the same pixel (True, as in many U-Net
            # ports, samples on a grid that depends on the input size: seams everywhere).
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net assembled from :class:`UNetConfig`; maps (N, bands, H, W) to (N, classes, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, factor = config.width, 2 if config.bilinear else 1
        channels = [w * 2**i for i in range(config.depth + 1)]
        self.inc = DoubleConv(config.in_channels, channels[0])
        self.downs = nn.ModuleList(
            Down(channels[i], channels[i + 1] // (factor if i == config.depth - 1 else 1))
            for i in range(config.depth)
        )
        self.ups = nn.ModuleList(
            Up(
                channels[i + 1],
                channels[i] // (factor if i > 0 else 1),
                config.bilinear,
            )
            for i in reversed(range(config.depth))
        )
        self.outc = nn.Conv2d(channels[0], config.classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        smallest = 2**self.config.depth
        padded = height < smallest or width < smallest
        if padded:
            # Inputs smaller than one cell of the deepest level are edge-padded, then cropped.
            x = F.pad(x, [0, max(0, smallest - width), 0, max(0, smallest - height)], "replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        # Cropped only when padded: an ONNX export then has a fixed output shape.
        return self.outc(x)[..., :height, :width] if padded else self.outc(x)


def state_shapes(config: UNetConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, is floating point) of every tensor in the state dict of
    ``UNet(config)``, found on the ``meta`` device: nothing is allocated, whatever the size."""
    with torch.device("meta"):
        model = UNet(config)
    return {name: (tuple(t.shape), t.is_floating_point())
            for name, t in model.state_dict().items()}


def available_devices() -> list[str]:
    """Names :func:`resolve_device` accepts on this machine: ``auto``, ``cpu``, then ``cuda``
    and ``cuda:N`` for each CUDA GPU, ``mps`` and ``xpu`` where torch has them."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for kind, backend in (("mps", getattr(torch.backends, "mps", None)),
                          ("xpu", getattr(torch, "xpu", None))):
        if backend is not None and backend.is_available():
            names.append(kind)
    return names


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (``auto``: the first CUDA GPU if any, else the CPU).

    Raises:
        ConfigError: ``name`` is not a device, or not one this machine has (the message
            lists those it has).
    """
    names = available_devices()
    if name == "auto":
        return torch.device("cuda" if "cuda" in names else "cpu")
    if name in names:
        return torch.device(name)
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; devices here: {', '.join(names)}") from None
    raise ConfigError(f"device {name!r} is not available here; devices here: {', '.join(names)}")


def fastest_memory_format(device: torch.device) -> torch.memory_format:
    """The layout in which the U-Net's convolutions run fastest on ``device``.

    Channels-last on the CPU: measured with the bundled width-8 road model, 4 x 576^2 tiles,
    2 threads, it takes 0.59-0.65 of the NCHW time with outputs equal to 4e-8
    (``benchmarks/onnx_engine.py``, figures in ``benchmarks/RESULTS.md``). Elsewhere torch's
    default (contiguous NCHW) until it is measured there.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for a single binary channel, softmax over channels otherwise (dim 1)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)
