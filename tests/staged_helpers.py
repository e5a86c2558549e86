"""A two-stage toy for the staged-method tests: a tiny regressor, frozen under a tiny tuner.

Registered names (test-only): methods ``test_stage_base`` (a conv net regressing target from
noisy source) and ``test_stage_tuner`` (``parent_names = ("base",)``: a conv adapter on the
input of its frozen parent, ``pred = base(x + adapter(x))``, so the gradient flows *through*
the frozen parent into the adapter). A tuner can itself be the ``base`` of another tuner.
Data: ``test_pairs`` of :mod:`train_helpers`.

Script entry, used by the SIGKILL test (trains the parent, then the tuner, in ``RUNS``)::

    python tests/staged_helpers.py RUNS [--steps N] [--ckpt-every K] [--sleep SECONDS]
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the script entry runs without the repo or tests/ on sys.path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_helpers as th  # noqa: E402 -- registers the test_pairs dataset
from medgen import registry  # noqa: E402
from medgen.config import RunConfig  # noqa: E402
from medgen.data.batch import Batch  # noqa: E402
from medgen.methods.base import Method  # noqa: E402

TUNER_SLEEP_ENV = "MEDGEN_TEST_TUNER_SLEEP"  # seconds to sleep in every tuner training_step (to kill it mid-way)


@th._register(registry.METHODS, "test_stage_base")
class StageBase(Method):
    """The first stage: ``net(source)``, trained with MSE on ``source + noise``."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        m = config.model
        self.net = th._conv_net(m.in_channels, m.channels[0], m.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict:
        x = batch.source + 0.1 * torch.randn(batch.source.shape, generator=generator, device=batch.source.device)
        return {"loss": F.mse_loss(self(x), batch.target)}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return self(source)


@th._register(registry.METHODS, "test_stage_tuner")
class StageTuner(Method):
    """The second stage: ``parents["base"](x + adapter(x))``; only the adapter trains."""

    parent_names = ("base",)

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        m = config.model
        self.adapter = th._conv_net(m.in_channels, m.channels[0], m.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parents["base"](x + self.adapter(x))

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict:
        delay = float(os.environ.get(TUNER_SLEEP_ENV, "0"))
        if delay:
            import time

            time.sleep(delay)
        x = batch.source + 0.1 * torch.randn(batch.source.shape, generator=generator, device=batch.source.device)
        return {"loss": F.mse_loss(self(x), batch.target)}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return self(source)


def base_config(**train: object) -> RunConfig:
    """The parent: ``test_stage_base`` on ``test_pairs``, 3 steps (``train`` overrides TrainConfig fields)."""
    return replace(th.tiny_config("test_stage_base", **{"steps": 3, **train}), name="unit_base")


def tuner_config(base: RunConfig | None = None, **train: object) -> RunConfig:
    """The child: ``test_stage_tuner`` with ``parents={"base": base or base_config()}``, 4 steps."""
    cfg = th.tiny_config("test_stage_tuner", **{"steps": 4, **train})
    return replace(cfg, name="unit_tuner", parents={"base": base if base is not None else base_config()})


def main(argv: list[str] | None = None) -> None:
    """Script entry: train_or_load the tuner (and so its parent) under RUNS."""
    from medgen.train import train_or_load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args(argv)
    os.environ[TUNER_SLEEP_ENV] = str(args.sleep)
    train_or_load(tuner_config(steps=args.steps, ckpt_every=args.ckpt_every), root=args.runs, progress=False,
                  device="cpu")
    print("done", flush=True)


if __name__ == "__main__":
    main()
