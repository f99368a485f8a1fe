"""Inference engines side by side: ONNX Runtime vs torch (channels-last and NCHW).

Parts (``--part``, default all), each alternating its variants round by round in this one
process so that drift of a shared machine falls on all of them alike:

- ``forward``: the bare forward pass of each bundled model on a batch of 576^2 tiles: torch
  NCHW (the layout before issue 16), torch channels-last (the torch engine now), ONNX Runtime
  (the onnx engine); median time ratios, the largest probability difference, model FLOPs per
  pixel and the GFLOP/s achieved next to the machine's float32 GEMM rate measured here.
- ``predict``: ``predict_raster`` on the 4096^2 road scene with the bundled road model (the
  mask written, as ``benchmarks.efficiency`` does), engine onnx vs torch vs torch in NCHW;
  plus the onnx engine's bare session over the same tiles (pipeline efficiency).
- ``fidelity``: probabilities and masks of the onnx engine against the torch engine on the two
  sample scenes, the real Vegas (1 band, uint16) and Landsat (RGB, nodata) tiles and a 4-band
  raster; with ``--tta`` on a 1024^2 crop of each sample scene too.

Usage: ``python -m benchmarks.onnx_engine [--part forward] [--rounds 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from benchmarks.common import ROOT, SAMPLE, WORK
from geounet import engines
from geounet.checkpoint import load_checkpoint, save_checkpoint
from geounet.engines import OnnxModel
from geounet.model import UNet, UNetConfig, logits_to_probabilities
from geounet.predict import PredictConfig, predict_raster
from geounet.tiling import TileGrid

MODELS = SAMPLE / "models"
DATA = ROOT.parent / "shared" / "data"


# -- measures -------------------------------------------------------------------------------
def flops_per_pixel(net: UNet, size: int = 576) -> float:
    """Multiply-adds x 2 of every convolution, per input pixel (BatchNorm folded, ReLU,
    pooling and upsampling not counted)."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * module.in_channels // module.groups * module.out_channels * k \
            * output.shape[-2] * output.shape[-1]

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        net(torch.zeros(1, net.config.in_channels, size, size))
    for hook in hooks:
        hook.remove()
    return total / size**2


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The best float32 matrix-multiply rate of torch on its current threads, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# -- parts ----------------------------------------------------------------------------------
def forward(rounds: int, batch: int, threads: int) -> None:
    print(f"\n## forward: {batch} x 576^2 tiles, {threads} threads, {rounds} rounds "
          "(medians; ratios per round)")
    rate = gemm_gflops()
    print(f"float32 GEMM (torch.mm 2048^2, {threads} threads): {rate:.1f} GFLOP/s")
    for path in sorted(MODELS.glob("*.safetensors")):
        _forward_model(path, rounds, batch, threads, rate)


def _forward_model(path: Path, rounds: int, batch: int, threads: int, rate: float) -> None:
    """Time the three variants of one model, alternating, and print its table."""
    net, meta = load_checkpoint(path)
    fpp = flops_per_pixel(net)
    x = torch.randn(batch, meta.arch.in_channels, 576, 576)
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    onnx = OnnxModel(meta, net).forward_function(threads)
    variants = {
        "torch NCHW": lambda: logits_to_probabilities(net(x)),
        "torch channels-last": lambda: logits_to_probabilities(last(x_last)),
        "onnx": lambda: onnx(x),
    }
    with torch.inference_mode():
        outputs = {name: call() for name, call in variants.items()}  # warm-up
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                times[name].append(_timed(call))
    base = times["torch NCHW"]
    pixels = batch * 576**2
    print(f"\n{path.name}: {fpp / 1e3:.1f} kFLOP/px")
    print(f"{'variant':<22}{'median s':>9}{'Mpx/s':>8}{'GFLOP/s':>9}{'of GEMM':>8}"
          f"{'NCHW/variant':>14}{'max |p - NCHW|':>16}")
    for name, spent in times.items():
        median = statistics.median(spent)
        speedup = statistics.median(b / s for b, s in zip(base, spent))
        diff = (outputs[name] - outputs["torch NCHW"]).abs().max().item()
        gflops = fpp * pixels / median / 1e9
        print(f"{name:<22}{median:>9.3f}{pixels / median / 1e6:>8.2f}{gflops:>9.2f}"
              f"{gflops / rate:>8.2f}{speedup:>14.2f}{diff:>16.1e}")


def predict(rounds: int, batch: int, threads: int) -> None:
    image = SAMPLE / "roads_image.tif"
    net, meta = load_checkpoint(MODELS / "roads.safetensors")
    with rasterio.open(image) as src:
        grid = TileGrid(src.height, src.width, meta.tile_size, meta.overlap)
    print(f"\n## predict: {image.name} {grid.width}x{grid.height}, {grid.tile_count} tiles, "
          f"batch {batch}, {threads} threads, {rounds} rounds")
    session = OnnxModel(meta, net).forward_function(threads)
    tiles = torch.randn(batch, meta.arch.in_channels, grid.tile_height, grid.tile_width)

    def bare_onnx() -> float:
        return _timed(lambda: [session(tiles[: min(batch, grid.tile_count - i)])
                               for i in range(0, grid.tile_count, batch)])

    def run(engine: str, layout: bool, out: Path, probabilities: bool) -> float:
        # layout False: the torch engine as before issue 16 (contiguous NCHW on the CPU).
        saved = engines.fastest_memory_format
        if not layout:
            engines.fastest_memory_format = lambda device: torch.contiguous_format
        try:
            config = PredictConfig(device="cpu", engine=engine, batch_size=batch,
                                   threads=threads, progress=False, overwrite=True)
            outputs = (None, out) if probabilities else (out.with_suffix(".mask.tif"), None)
            return _timed(lambda: predict_raster(image, (copy.deepcopy(net), meta), *outputs,
                                                 config))
        finally:
            engines.fastest_memory_format = saved

    names = ("onnx", "torch", "torch NCHW", "bare onnx")
    times = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        outs = {name: Path(tmp) / f"{name.replace(' ', '_')}.tif" for name in names[:3]}
        for r in range(rounds + 1):  # round 0: warm-up writing probabilities, not counted
            spent = {"onnx": run("onnx", True, outs["onnx"], not r),
                     "torch": run("torch", True, outs["torch"], not r),
                     "torch NCHW": run("torch", False, outs["torch NCHW"], not r),
                     "bare onnx": bare_onnx()}
            if r:
                for name, s in spent.items():
                    times[name].append(s)
                print("round " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()))
        probs = {name: _read(path) for name, path in outs.items()}
    px = grid.width * grid.height
    fpp = flops_per_pixel(net)
    overhead = grid.compute_overhead
    print(f"{'engine':<12}{'median s':>9}{'Mpx/s':>8}{'model GFLOP/s':>14}"
          f"{'NCHW/engine':>12}{'max |p - NCHW|':>16}")
    for name in names[:3]:
        median = statistics.median(times[name])
        ratio = statistics.median(b / s for b, s in zip(times["torch NCHW"], times[name]))
        diff = np.nanmax(np.abs(probs[name] - probs["torch NCHW"]))
        print(f"{name:<12}{median:>9.2f}{px / median / 1e6:>8.2f}"
              f"{fpp * px * overhead / median / 1e9:>14.2f}{ratio:>12.2f}{diff:>16.1e}")
    onnx_vs_torch = statistics.median(t / o for t, o in zip(times["torch"], times["onnx"]))
    efficiency = statistics.median(b / o for b, o in zip(times["bare onnx"], times["onnx"]))
    print(f"onnx vs torch (channels-last) throughput ratio, median of pairs: {onnx_vs_torch:.2f}")
    print(f"onnx pipeline efficiency (bare session / predict), median: {efficiency:.3f}")
    print(f"GEMM now: {gemm_gflops():.1f} GFLOP/s")


def _crop(source: Path, out: Path, size: int) -> Path:
    with rasterio.open(source) as src:
        window = Window(0, 0, min(size, src.width), min(size, src.height))
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return out


def _adapted(net: UNet, meta, bands: int, mean, std, folder: Path) -> Path:
    """The road model with ``bands`` input bands: its first convolution's weights averaged
    over RGB for each new band (scaled so the activations keep their size)."""
    arch = UNetConfig(bands, meta.arch.classes, meta.arch.width, meta.arch.depth,
                      meta.arch.bilinear)
    adapted = UNet(arch).eval()
    state = net.state_dict()
    first = "inc.block.0.weight"
    weight = state[first].mean(dim=1, keepdim=True) * 3 / bands
    state = {**state, first: weight.repeat(1, bands, 1, 1)}
    adapted.load_state_dict(state)
    meta = replace(meta, arch=arch, bands=tuple(range(1, bands + 1)), mean=tuple(mean),
                   std=tuple(std), source={"name": f"road model adapted to {bands} bands"})
    return save_checkpoint(folder / f"roads_{bands}band.safetensors", adapted, meta)


def _band_stats(path: Path) -> tuple[list[float], list[float]]:
    data = _read(path).astype(np.float64)
    return [float(b.mean()) for b in data], [float(b.std()) for b in data]


def fidelity(threads: int) -> None:
    print(f"\n## fidelity: onnx engine vs torch engine, {threads} threads")
    print(f"{'scene':<34}{'model':<18}{'tta':<5}{'mean |dp|':>10}{'max |dp|':>10}"
          f"{'mask IoU':>10}{'masks differ px':>16}")
    net, meta = load_checkpoint(MODELS / "roads.safetensors")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        tmp = Path(tmp)
        cases = [(SAMPLE / "roads_image.tif", MODELS / "roads.safetensors", False),
                 (SAMPLE / "cracks_image.tif", MODELS / "cracks.safetensors", False),
                 (_crop(SAMPLE / "roads_image.tif", tmp / "roads_1024.tif", 1024),
                  MODELS / "roads.safetensors", True),
                 (_crop(SAMPLE / "cracks_image.tif", tmp / "cracks_1024.tif", 1024),
                  MODELS / "cracks.safetensors", True)]
        landsat = DATA / "landsat_rgb" / "RGB.byte.tif"
        if landsat.exists():
            cases.append((landsat, MODELS / "roads.safetensors", False))
        vegas = DATA / "spacenet_vegas_road" / "road_mask_input.tif"
        if vegas.exists():
            mean, std = _band_stats(vegas)
            cases.append((vegas, _adapted(net, meta, 1, mean, std, tmp), False))
        four = tmp / "roads_4band.tif"
        with rasterio.open(SAMPLE / "roads_image.tif") as src:
            data = src.read(window=Window(0, 0, 2048, 2048))
            profile = src.profile | {"count": 4, "width": 2048, "height": 2048,
                                     "photometric": "MINISBLACK"}
        nir = (data.astype(np.uint16).sum(axis=0) // 3).astype(np.uint8)
        with rasterio.open(four, "w", **profile) as dst:
            dst.write(np.concatenate([data, nir[None]]))
        mean, std = _band_stats(four)
        cases.append((four, _adapted(net, meta, 4, mean, std, tmp), False))
        for raster, model, tta in cases:
            probs, masks = {}, {}
            for engine in ("torch", "onnx"):
                prob, mask = tmp / f"{engine}_p.tif", tmp / f"{engine}_m.tif"
                predict_raster(raster, model, mask, prob, PredictConfig(
                    device="cpu", engine=engine, threads=threads, tta=tta, progress=False,
                    overwrite=True))
                probs[engine], masks[engine] = _read(prob), _read(mask)[0]
            diff = np.abs(probs["onnx"] - probs["torch"])
            fg = {k: (m != 0) & (m != 255) for k, m in masks.items()}
            union = (fg["onnx"] | fg["torch"]).sum()
            iou = (fg["onnx"] & fg["torch"]).sum() / union if union else 1.0
            print(f"{raster.name:<34}{model.stem:<18}{'yes' if tta else 'no':<5}"
                  f"{np.nanmean(diff):>10.1e}{np.nanmax(diff):>10.1e}{iou:>10.6f}"
                  f"{int((masks['onnx'] != masks['torch']).sum()):>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["forward", "predict", "fidelity"], action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    parts = args.part or ["forward", "predict", "fidelity"]
    if "forward" in parts:
        forward(args.rounds, args.batch, args.threads)
    if "predict" in parts:
        predict(args.rounds, args.batch, args.threads)
    if "fidelity" in parts:
        fidelity(args.threads)


if __name__ == "__main__":
    main()
