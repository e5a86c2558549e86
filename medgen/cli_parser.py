"""The ``medgen`` argument parser: every subcommand's options (:func:`build_parser`), one-line usage errors.

:mod:`medgen.cli` parses with it and dispatches to the commands.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
from typing import NoReturn

from medgen import __version__

PROG = "medgen"
EXIT_USAGE = 2
SAMPLE_OPTIONS = (("sampler", "sampler"), ("steps", "steps"), ("eta", "eta"), ("guidance", "guidance_scale"))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}{_choice_hint(message)} (see '{self.prog} --help')\n")


def _choice_hint(message: str) -> str:
    """``; did you mean 'train'?`` for argparse's "invalid choice: 'trian' (choose from ...)"."""
    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not match:
        return ""
    choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
    close = difflib.get_close_matches(match.group(1), choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------
def _default_preset() -> str:
    """``$MEDGEN_PRESET`` or ``smoke``."""
    return os.environ.get("MEDGEN_PRESET") or "smoke"


def _config_options() -> _Parser:
    """``--set`` and ``--dry-run``: every subcommand that resolves a config."""
    parent = _Parser(add_help=False)
    parent.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.steps=100 (repeatable)")
    parent.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    return parent


def _preset_options(task: bool = True) -> _Parser:
    """``--task`` and ``--preset``."""
    parent = _Parser(add_help=False)
    if task:
        parent.add_argument("--task", default="quickstart", help="task whose presets to use (default: quickstart)")
    parent.add_argument("--preset", default=_default_preset(),
                        help="ci | smoke | cpu | paper (default: $MEDGEN_PRESET or smoke)")
    return parent


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The model of ``sample`` / ``evaluate``: a ``--checkpoint`` folder, or ``--task`` + ``--preset`` found by
    :func:`medgen.zoo.resolve` (the shipped checkpoint when its config matches, else cached or trained)."""
    parser.add_argument("--checkpoint", help="checkpoint (or run) folder printed by 'medgen train'")
    parser.add_argument("--task", help="instead of --checkpoint: the task whose preset model to use "
                                       "(shipped checkpoint, cached run, or trained now), e.g. mri_to_ct/ddim_image")
    parser.add_argument("--preset", default=_default_preset(),
                        help="with --task: ci | smoke | cpu | paper (default: $MEDGEN_PRESET or smoke)")
    _verify_option(parser)


def _verify_option(parser: argparse.ArgumentParser) -> None:
    """``--no-verify-weights``: load weight files whose sha256 differs from the manifest's (edited on purpose)."""
    parser.add_argument("--no-verify-weights", action="store_true",
                        help="load weights even if their sha256 differs from the checkpoint manifest's "
                             "(weights edited on purpose; same as MEDGEN_NO_VERIFY_WEIGHTS=1)")


def _sampling_options(parser: argparse.ArgumentParser, guidance: bool = True) -> None:
    """``--sampler --steps --eta --guidance --seed`` (override the checkpoint's sample config)."""
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp"), help="sampler (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, help="denoiser evaluations (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, help="DDIM stochasticity, 0 = deterministic")
    if guidance:  # classifier-free guidance: not for an unconditional prior
        parser.add_argument("--guidance", type=float, help="classifier-free guidance scale w")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    """The full ``medgen`` argument parser."""
    parser = _Parser(prog=PROG, description="Diffusion-based medical image translation: "
                     "train, sample, evaluate, reproduce the papers' tables, demo.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cfg_opts, preset_opts = _config_options(), _preset_options()

    p = sub.add_parser("train", parents=[preset_opts, cfg_opts], help="train a model (or load it from the cache)")
    p.add_argument("--method", help="registry method name (shortcut for --set method=NAME)")
    p.add_argument("--runs", default="runs", help="folder of cached runs (default: ./runs)")
    p.add_argument("--force", action="store_true", help="retrain even if this config's run is cached")

    p = sub.add_parser("sample", parents=[cfg_opts], help="translate one image with a trained checkpoint")
    _model_options(p)
    p.add_argument("--input", required=True, action="append",
                   help="source image: 2D .png, .tif, .jpg or .npy, or a NIfTI / DICOM file or DICOM "
                        "folder (3D: the middle sagittal slice); repeat it once per channel for a model whose "
                        "source has several (e.g. the five ultrasound depths), or give one .npy [K, H, W]")
    p.add_argument("--cond", action="append", default=[], metavar="NAME=NUMBER",
                   help="a per-sample condition of the model, e.g. --cond uca=32.5 (repeatable; the model "
                        "says which it needs)")
    p.add_argument("--output", required=True, help="where to write the translated image (.png or .npy)")
    p.add_argument("--allow-modality-mismatch", action="store_true",
                   help="translate an input whose DICOM Modality differs from the one the model was trained on "
                        "(refused by default)")
    _sampling_options(p)

    p = sub.add_parser("evaluate", parents=[cfg_opts], help="evaluate a checkpoint on its dataset's test split")
    _model_options(p)
    p.add_argument("--out", default="evaluation.csv", help="CSV of per-sample rows (default: ./evaluation.csv)")
    p.add_argument("--metrics", default="psnr,ssim", help="comma-separated metric names (default: psnr,ssim)")
    p.add_argument("--batch-size", type=int, default=16, help="images per translate() call (default: 16)")
    p.add_argument("--no-baseline", action="store_true", help="skip the identity (input as output) baseline rows")
    _sampling_options(p)

    p = sub.add_parser("generate", parents=[cfg_opts], help="draw images from a prior (e.g. --task lung_us/prior)")
    _model_options(p)
    p.add_argument("--n", type=int, default=8, help="number of images (default: 8)")
    p.add_argument("--out", required=True, help="folder for image_000.png ... and images.npy (model range)")
    _sampling_options(p, guidance=False)

    p = sub.add_parser("reconstruct", parents=[cfg_opts], help="reconstruct an image from a measurement with a "
                       "prior (diffusion posterior sampling; sampler default: ancestral ddpm)")
    _model_options(p)
    p.add_argument("--operator", required=True, help="forward operator: us_linear, us_acoustic, blur or inpaint")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--measurement", help="the measurement: a .npy of the operator's output shape")
    given.add_argument("--input", help="an image (.png, DICOM, NIfTI, ...) to simulate the measurement from; "
                       "the mean's PSNR / SSIM against it are printed")
    p.add_argument("--noise", type=float, help="noise std of the simulated measurement (default: the operator's)")
    p.add_argument("--scale", type=float, help="DPS guidance scale (default: the lung prior's tuned scale at "
                   "its preset; required for other models)")
    p.add_argument("--samples", type=int, default=4, help="posterior samples behind the mean / SD (default: 4)")
    p.add_argument("--out", required=True, help="folder for mean / sd (.png, .npy), samples.npy, measurement.npy")
    p.add_argument("--allow-modality-mismatch", action="store_true",
                   help="reconstruct from an --input whose DICOM Modality differs from the one the prior was "
                        "trained on (refused by default)")
    _sampling_options(p, guidance=False)

    p = sub.add_parser("export", help="write a slim, shippable copy of a trained checkpoint (sampling weights only)")
    p.add_argument("checkpoint", help="checkpoint (or run) folder printed by 'medgen train'")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--dtype", default="float16", help="weights dtype: float16 (default), bfloat16 or float32")
    p.add_argument("--verify", type=int, default=4, help="test images translated with both weights; the "
                   "export is refused if the outputs differ by < 40 dB PSNR (0 = skip; default: 4)")
    _verify_option(p)

    p = sub.add_parser("upgrade", help="give existing checkpoints (the shipped ones) the out-of-distribution "
                       "calibration and weight hashes, without retraining or touching the weights")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint (or run) folders")
    p.add_argument("--space", default=None, help="feature space of the out-of-distribution score "
                   "(default: efficientnet_lite0; also pixels, inception)")
    p.add_argument("--percentile", type=float, default=None,
                   help="threshold percentile of the held-out training images' distances (default: 99)")

    p = sub.add_parser("reproduce", parents=[_preset_options(task=False)],
                       help="run the paper notebooks with papermill into reports/")
    p.add_argument("--papers", default="", help="notebooks whose name contains one of these words "
                   "(comma/space separated; default: all)")
    p.add_argument("--kernel", default="python3", help="jupyter kernel (default: python3 = this interpreter)")
    p.add_argument("--dry-run", action="store_true", help="list the notebooks that would run and exit")
    p.add_argument("--retrain", action="store_true", help="ignore the shipped checkpoints: train every model "
                   "(or load it from runs/) as on a machine without checkpoints/ (same as RETRAIN=1)")

    p = sub.add_parser("demo", parents=[_preset_options(task=False)], help="launch the Gradio demo in a browser")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--runs", help="folder of cached runs the demo loads/trains models in (default: the app's)")
    p.add_argument("--dry-run", action="store_true", help="print what would be launched and exit")

    p = sub.add_parser("phantoms", parents=[preset_opts, cfg_opts],
                       help="write a phantom data set in the real-data format (manifest.csv + images)")
    p.add_argument("anatomy", nargs="?", help="phantom (spine_coronal, spine_sagittal, knee, lung) or a "
                   "registry dataset such as toy_shapes (default: the preset's data.dataset)")
    p.add_argument("--dataset", help="same as the positional anatomy (kept for old scripts)")
    p.add_argument("--n", type=int, default=8, help="number of subjects (default: 8)")
    p.add_argument("--out", default="phantoms", help="output folder, must not exist or be empty (default: ./phantoms)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="split to draw from (default: test)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default: 0)")
    p.add_argument("--size", help="rendered size HxW or HxWxD (default: the phantom's size at --preset)")
    p.add_argument("--control", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a phantom parameter, e.g. --control kl_grade=3 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--card", action="store_true", help="print the phantom's dataset card and exit")
    return parser
