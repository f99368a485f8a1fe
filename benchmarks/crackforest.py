"""CrackForest: train on the train split, score the test split as the crack literature does.

Runs the recorded recipe ``workflows/train_crackforest.yaml`` with ``geounet train`` (unless
``--skip-train`` and the checkpoint exists), then ``geounet evaluate`` of the best checkpoint
on the 29 test images, plainly and with ``--tta`` (8 orientations per tile): tolerant
precision/recall/F1 at 2 px and 0.5, pixel IoU, ODS/OIS over 99 thresholds. The test split
is used for nothing else. Prints a Markdown block for benchmarks/RESULTS.md beside the
published figure of the data README (Lau et al. 2020, pretrained ResNet-34 U-Net, F1 about
0.96 on their own split).

With ``--reproducibility``, instead: two short runs of the same recipe with the same seed
(metrics must agree to 3 decimals), and a third run killed with SIGKILL during its third
epoch, then resumed with ``--resume`` (it must finish with the same epochs and metrics).

Usage: ``python -m benchmarks.crackforest [--skip-train] [--minutes 45] [--reproducibility]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, WORK

DATA = ROOT.parent / "shared" / "data" / "crackforest"
CONFIG = ROOT / "workflows" / "train_crackforest.yaml"
PUBLISHED = "U-Net + ImageNet ResNet-34 encoder, F1 ~0.96 (Lau et al. 2020, own split)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-train", action="store_true",
                        help="Score the existing checkpoint only.")
    parser.add_argument("--minutes", type=float, default=45.0,
                        help="Training time limit (max_minutes).")
    parser.add_argument("--output", default=str(WORK / "crackforest.safetensors"))
    parser.add_argument("--reproducibility", action="store_true",
                        help="Same-seed reruns and kill + resume on a short schedule.")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"CrackForest not found at {DATA}; see ../shared/data/README.md")
    if args.reproducibility:
        reproducibility()
        return
    geounet = [sys.executable, "-m", "geounet"]
    train_command = [*geounet, "train", "--config", str(CONFIG.relative_to(ROOT)), "-o",
                     args.output, "--max-minutes", f"{args.minutes:g}", "--overwrite"]
    if not args.skip_train:
        print("$", " ".join(train_command[2:]), flush=True)
        start = time.perf_counter()
        log = WORK / "crackforest_train.log"   # progress bar and per-epoch scores
        with log.open("w") as stderr:
            done = subprocess.run([*train_command, "-v"], cwd=ROOT, check=True, text=True,
                                  stdout=subprocess.PIPE, stderr=stderr)
        wall = time.perf_counter() - start
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        summary["wall_seconds"] = wall
        (WORK / "crackforest_train.json").write_text(json.dumps(summary, indent=1))
    summary = json.loads((WORK / "crackforest_train.json").read_text())
    print(f"\nCrackForest test split, model trained {summary['train_seconds'] / 60:.1f} min "
          f"({summary['steps']} steps, {summary['steps_per_second']:.2f} steps/s, "
          f"{summary['epochs']} epochs, best epoch {summary['best']['epoch']}, stopped: "
          f"{summary['stopped']})")
    print("| prediction (test split) | tolerant P / R / F1 (2 px) | ODS (t) / OIS tolerant F1 "
          "| pixel IoU / F1 |")
    print("|---|---|---|---|")
    for tta in (False, True):
        report_path = WORK / f"crackforest_test{'_tta' if tta else ''}.json"
        evaluate_command = [*geounet, "evaluate", "-m", args.output, "--images",
                            str(DATA / "images"), "--labels", str(DATA / "masks"),
                            "--split-file", str(DATA / "split.txt"), "--split", "test",
                            "--tolerance", "2", "-o", str(report_path), "--overwrite", "--json",
                            "-q", *(["--tta"] if tta else [])]
        print("$", " ".join(evaluate_command[2:]), flush=True)
        report = json.loads(subprocess.run(evaluate_command, cwd=ROOT, check=True,
                                           capture_output=True, text=True).stdout)
        tol, pix, ods = report["tolerant"], report["pixel"], report["ods_ois"]
        print(f"| {'with --tta' if tta else 'plain'} ({report['images']} images, threshold "
              f"{report['threshold']:g}) | {tol['precision']:.3f} / {tol['recall']:.3f} / "
              f"{tol['f1']:.3f} | {ods['ods_f1']:.3f} ({ods['ods_threshold']:.2f}) / "
              f"{ods['ois_f1']:.3f} | {pix['iou']:.3f} / {pix['f1']:.3f} |")
    print(f"| published: {PUBLISHED} | F1 ~0.96 | - | - |")


SHORT = ["--epochs", "4", "--steps-per-epoch", "40", "--width", "8", "--threads", "1"]


def _short_run(name: str, *extra: str, kill_in_epoch: int | None = None) -> list[dict]:
    """A short CrackForest run; its per-epoch history (from the last checkpoint's state)."""
    from geounet.train import last_paths

    out = WORK / "reproducibility" / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "geounet", "train", "--config",
               str(CONFIG.relative_to(ROOT)), "-o", str(out), *SHORT, "-q", *extra]
    if "--resume" not in extra:
        command.append("--overwrite")
    if kill_in_epoch is None:
        subprocess.run(command, cwd=ROOT, check=True)
    else:
        process = subprocess.Popen(command, cwd=ROOT)
        state = last_paths(out)[1]
        while _epoch(state) < kill_in_epoch - 1:   # wait for the epoch before to be saved
            time.sleep(0.5)
            if process.poll() is not None:
                raise RuntimeError(f"{name} ended before it could be killed")
        time.sleep(2.0)                             # part way into the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
        print(f"{name}: killed with SIGKILL after epoch {_epoch(state)} was saved")
    return _history(last_paths(out)[1])


def _epoch(state: Path) -> int:
    return _history(state)[-1]["epoch"] if state.exists() else 0


def _history(state: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(state), framework="pt") as f:
        return json.loads(f.metadata()["state"])["history"]


def reproducibility() -> None:
    keys = ("loss", "iou", "f1", "tolerant_f1")
    runs = {"a": _short_run("a"), "b": _short_run("b")}
    _short_run("c", kill_in_epoch=3)
    runs["c resumed"] = _short_run("c", "--resume")
    print(f"short recipe: {' '.join(SHORT)} (seed 0)")
    print("| run | epochs | " + " | ".join(f"last {k}" for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, history in runs.items():
        print(f"| {name} | {len(history)} | "
              + " | ".join(f"{history[-1][k]:.4f}" for k in keys) + " |")
    same = all(round(x[k], 3) == round(y[k], 3) for x, y in zip(runs["a"], runs["b"])
               for k in keys)
    resumed = all(round(x[k], 3) == round(y[k], 3)
                  for x, y in zip(runs["a"], runs["c resumed"]) for k in keys)
    print(f"same seed, same metrics to 3 decimals at every epoch: {same}")
    print(f"killed + resumed = unbroken run to 3 decimals at every epoch: {resumed}")


if __name__ == "__main__":
    main()
