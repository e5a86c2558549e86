"""Latent vs pixel diffusion speed: a training step and a sample of the latent cDDPM against the pixel cDDPM.

Run ``python -m benchmark.latent [--quick]``; it writes ``reports/benchmark/latent.csv`` and
``latent.md`` (columns ``measure,value,unit,goal,holds``) and prints the table.

What is timed
-------------
The latent model is ``quickstart_latent/cddpm`` at ``--preset`` (default ``cpu``: 64 x 64
images, a KL autoencoder with f = 4 and 4 latent channels, the UNet (32, 64, 128) on the
16 x 16 latents; :mod:`medgen.presets.latent`), with its autoencoder parent
(``quickstart_latent/autoencoder``) attached. The pixel model is the same config without the
parent and with the UNet's in / out / condition channels set to the image's (1): the same
UNet widths, schedule, sampler and batch, on the 64 x 64 pixels. So the ratios say what
moving the same diffusion model into the latent space buys at the same image size.

* Training step: ``method.training_step(batch, "model")`` and the backward pass, at the
  preset's ``train.batch_size`` (the optimiser step is the same for both and left out). The
  latent step includes encoding the target and the source with the frozen autoencoder.
* Sample: ``method.translate(source)`` under ``torch.inference_mode`` with the preset's
  sampler (DDIM, ``sample.steps``) at ``--sample-batch`` images; the latent sample includes
  encoding the source and decoding the result.
* The autoencoder's own share: one encode and one decode of a batch, reported beside them.

It runs on one torch thread by default (``--threads``; the ``cpu`` preset trains on one too):
on the shared 2-core machine a two-thread backward pass stalled for seconds under load, which
turned the training-step ratio into noise.

The weights are random (seeded; zero-initialised tensors get small random values,
:func:`benchmark.harness.randomize_zero_init`; the autoencoder's latent scale is set to 1):
speed does not depend on the values, so nothing is trained. As in every benchmark
(:mod:`benchmark.harness`), the two arms of a group run alternately after one untimed warm-up
call each; times are medians over rounds and every ratio is the median of per-round ratios,
with its interquartile range and the ratio of the fastest rounds beside it. The rows are
``report`` rows (no goal).

Duration on the shared 2-core machine at ``cpu``, one thread: ``--quick`` (one round) about 15 s; the full
run (9 rounds) about 80 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from benchmark.harness import (Row, add_output_options, interleave, logger, n_parameters, randomize_zero_init,
                               ratio_rows, run_benchmark)
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import RunConfig, get_preset
from medgen.data.batch import Batch
from medgen.diffusion.latent import pixel_config
from medgen.methods.base import Method
from medgen.presets import latent as presets
from medgen.registry import METHODS, lookup

NAME, TITLE = "latent", "Latent vs pixel diffusion speed (quickstart cDDPM)"

log = logger("latent")


@dataclass
class Arm:
    """One model with random weights and the batches it is timed on."""

    label: str
    cfg: RunConfig
    method: Method

    def batch(self, n: int, seed: int = 0) -> Batch:
        """A training batch of ``n`` uniform [-1, 1] sources and targets at the preset's image size."""
        size = self.cfg.data.image_size
        g = torch.Generator().manual_seed(seed)
        shape = (n, 1, size, size)
        return Batch(source=torch.rand(shape, generator=g) * 2 - 1, target=torch.rand(shape, generator=g) * 2 - 1,
                     mask=None, meta={})

    def train_arm(self, n: int) -> Callable[[], None]:
        """One loss + backward pass on a fixed batch of ``n``."""
        batch = self.batch(n)

        def call() -> None:
            self.method.zero_grad(set_to_none=True)
            loss = self.method.training_step(batch, "model", torch.Generator().manual_seed(0))["loss"]
            loss.backward()

        return call

    def sample_arm(self, n: int) -> Callable[[], torch.Tensor]:
        """One ``translate`` of a fixed source batch of ``n`` (the preset's sampler and steps)."""
        source = self.batch(n, seed=1).source

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return self.method.translate(source, generator=torch.Generator().manual_seed(0))

        return call


def build(preset: str, seed: int = 0) -> tuple[Arm, Arm, Method]:
    """``(pixel, latent, autoencoder)`` at ``preset`` with seeded random weights."""
    cfg = get_preset(preset, task=presets.CDDPM)
    ae_cfg = cfg.parents["autoencoder"]
    torch.manual_seed(seed)
    ae = randomize_zero_init(lookup(METHODS, ae_cfg.method)(ae_cfg)).eval()
    ae.autoencoder.scale.fill_(1.0)  # random weights: any positive scale times the same
    torch.manual_seed(seed)
    latent = randomize_zero_init(lookup(METHODS, cfg.method)(cfg)).train()
    latent.attach_parents({"autoencoder": ae})
    pcfg = pixel_config(cfg)
    torch.manual_seed(seed)
    pixel = randomize_zero_init(lookup(METHODS, pcfg.method)(pcfg)).train()
    return Arm("pixel", pcfg, pixel), Arm("latent", cfg, latent), ae


def report_ratio_rows(what: str, numerator: Sequence[float], denominator: Sequence[float]) -> list[Row]:
    """:func:`benchmark.harness.ratio_rows` as report rows (``what`` must hold no colon)."""
    rows = ratio_rows(f"{what}: median of per-round ratios", numerator, denominator, ">=", 0.0)
    return [replace(rows[0], goal="report", holds=None), *rows[1:]]


def run(args: argparse.Namespace) -> list[Row]:
    """Time the training step and the sample of both models, and the autoencoder's encode / decode."""
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 9)
    pixel, latent, ae = build(args.preset)
    cfg = latent.cfg
    size, bs, sb = cfg.data.image_size, args.batch or cfg.train.batch_size, args.sample_batch
    z = ae.latent_shape((1, 1, size, size))[1:]
    tag = f"{size}x{size} px, latent {'x'.join(map(str, z))}"
    log(f"preset {args.preset}: {tag}, train batch {bs}, sample batch {sb}, {repeats} rounds, "
        f"{torch.get_num_threads()} threads")
    rows = [Row("parameters pixel cDDPM UNet", n_parameters(pixel.method) / 1e6, "M"),
            Row("parameters latent cDDPM UNet", n_parameters(latent.method) / 1e6, "M"),
            Row("parameters autoencoder (frozen parent)", sum(p.numel() for p in ae.parameters()) / 1e6, "M")]

    group = f"training step, {tag}, batch {bs}"
    times = interleave({"pixel": pixel.train_arm(bs), "latent": latent.train_arm(bs)}, repeats, group, log=log)
    rows += [Row(f"{group}: pixel cDDPM", statistics.median(times["pixel"]), "s/step"),
             Row(f"{group}: latent cDDPM (encodes target and source)", statistics.median(times["latent"]), "s/step"),
             *report_ratio_rows(f"{group} speed-up pixel / latent", times["pixel"], times["latent"])]

    sampler = f"{cfg.sample.sampler.upper()} t={cfg.sample.steps}"
    group = f"sample, {tag}, {sampler}, batch {sb}"
    times = interleave({"pixel": pixel.sample_arm(sb), "latent": latent.sample_arm(sb)}, repeats, group, log=log)
    rows += [Row(f"{group}: pixel cDDPM", statistics.median(times["pixel"]) / sb, "s/image"),
             Row(f"{group}: latent cDDPM (encode source, sample, decode)", statistics.median(times["latent"]) / sb,
                 "s/image"),
             *report_ratio_rows(f"{group} speed-up pixel / latent", times["pixel"], times["latent"])]

    x = latent.batch(sb, seed=2).target
    with torch.inference_mode():
        zs = ae.encode(x)
    group = f"autoencoder, {tag}, batch {sb}"

    def encode() -> torch.Tensor:
        with torch.inference_mode():
            return ae.encode(x)

    def decode() -> torch.Tensor:
        with torch.inference_mode():
            return ae.decode(zs)

    times = interleave({"encode": encode, "decode": decode}, repeats, group, log=log)
    rows += [Row(f"{group}: encode", statistics.median(times["encode"]) / sb, "s/image"),
             Row(f"{group}: decode", statistics.median(times["decode"]) / sb, "s/image")]
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmark.latent", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round (checks the code path)")
    p.add_argument("--preset", default="cpu", help="quickstart_latent preset (default cpu: 64 px, latent 4x16x16)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per group (default 9, quick 1)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's train.batch_size)")
    p.add_argument("--sample-batch", type=int, default=8, help="images per translate() call (default 8)")
    add_output_options(p, threads=1)  # one thread: under any other load two threads stall (TOOLCHAIN.md)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, write the CSV and markdown, print the table (:func:`benchmark.harness.run_benchmark`)."""
    return run_benchmark(argv, parse_args=parse_args, run=run, name=NAME, title=TITLE, module="benchmark.latent",
                         method="Random weights (speed does not depend on training); times are medians over "
                                "interleaved rounds, ratios medians of per-round ratios; see benchmark/latent.py.")


if __name__ == "__main__":
    sys.exit(main())
