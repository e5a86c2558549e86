"""Tiny test-only methods and data for the training / checkpoint tests, plus a script entry.

Registered names (test-only): methods ``test_regressor`` (a 2-layer conv net regressing
target from noisy source), ``test_regressor_det`` (the same without noise),
``test_gan`` (generator + discriminator groups), ``test_multi`` (a trunk shared by two groups,
one stepping every 2nd step with its own lr and betas, per-step draws in ``begin_step``) and
``test_identity`` (no parameters); datasets ``test_pairs`` (disjoint train/test patients) and
``test_pairs_leaky`` (test patients overlap train).

Script entry, used by subprocess tests (SIGKILL resume, torchrun DDP)::

    python tests/train_helpers.py OUT_DIR [--steps N] [--batch B] [--accum A] [--ckpt-every K]
                                          [--sleep SECONDS] [--method NAME]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train_helpers.py OUT_DIR ...
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the script entry runs without the repo on sys.path
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

import medgen.data  # noqa: E402, F401 -- fills DATASETS
import medgen.methods  # noqa: E402, F401 -- fills METHODS
from medgen import registry  # noqa: E402
from medgen.config import DataConfig, RunConfig, TrainConfig, UNetConfig  # noqa: E402
from medgen.data.batch import Batch  # noqa: E402
from medgen.methods.base import Method  # noqa: E402

SLEEP_ENV = "MEDGEN_TEST_STEP_SLEEP"  # seconds to sleep in every training_step (to kill a run mid-way)


def _register(table: dict, name: str):
    """Like registry.register, but tolerant of this module being imported twice under two names."""
    def deco(obj):
        table.setdefault(name, obj)
        return obj
    return deco


def _conv_net(c_in: int, width: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, c_out, 3, padding=1))


def _sleep() -> None:
    delay = float(os.environ.get(SLEEP_ENV, "0"))
    if delay:
        time.sleep(delay)


@_register(registry.METHODS, "test_regressor")
class TinyRegressor(Method):
    """Conv net trained with MSE on ``source + noise`` (noise drawn from the step generator)."""

    noise_std = 0.1

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        m = config.model
        self.net = _conv_net(m.in_channels, m.channels[0], m.out_channels)
        self.register_buffer("offset", torch.zeros(1))  # float buffer: EMA-averaged
        self.register_buffer("version", torch.tensor(3))  # int buffer: copied, not averaged

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict:
        _sleep()
        x = batch.source
        if self.noise_std:
            x = x + self.noise_std * torch.randn(x.shape, generator=generator, device=x.device)
        pred = self.net(x) + self.offset
        return {"loss": F.mse_loss(pred, batch.target), "mae": (pred - batch.target).abs().mean().detach()}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return self.net(source) + self.offset


@_register(registry.METHODS, "test_regressor_det")
class TinyDeterministicRegressor(TinyRegressor):
    """:class:`TinyRegressor` without input noise: its gradient does not depend on the generator."""

    noise_std = 0.0


@_register(registry.METHODS, "test_gan")
class TinyGAN(Method):
    """Two optimiser groups: a conv generator (L1 + adversarial) and a patch discriminator.

    ``freeze_discriminator = True`` makes the discriminator's own loss have zero gradient, so
    its weights may change only if fit() wrongly steps them with the generator's gradients.
    ``calls`` records the group of every training_step call.
    """

    freeze_discriminator = False

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        m = config.model
        self.gen = _conv_net(m.in_channels, m.channels[0], m.out_channels)
        self.disc = nn.Sequential(nn.Conv2d(m.out_channels, 4, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 1))
        self.calls: list[str] = []

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.gen.parameters()), "discriminator": list(self.disc.parameters())}

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict:
        self.calls.append(group)
        noise = 0.1 * torch.randn(batch.source.shape, generator=generator, device=batch.source.device)
        fake = self.gen(batch.source + noise)
        if group == "generator":
            adv = F.softplus(-self.disc(fake)).mean()
            return {"loss": (fake - batch.target).abs().mean() + 0.1 * adv, "adv": adv.detach()}
        loss = F.softplus(-self.disc(batch.target)).mean() + F.softplus(self.disc(fake.detach())).mean()
        return {"loss": 0.0 * loss if self.freeze_discriminator else loss}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return self.gen(source)


@_register(registry.METHODS, "test_multi")
class TinyMulti(Method):
    """UXDiff-shaped groups: a ``shared`` trunk updated by two groups, per-step draws, every-k, own lrs.

    ``"main"`` (trunk + ``head_main``, train.lr): ``head_main(trunk(x + noise))`` regresses the
    target; ``"aux"`` (trunk + ``head_aux``, half the lr, betas (0.5, 0.9), every 2nd step,
    ``shared=True``): ``head_aux(trunk(x + noise))`` matches the main prediction on the same
    noisy input (a consistency loss). ``noise`` is drawn once per step in :meth:`begin_step`
    and rides in the batch; every group also draws a little noise of its own from its
    generator. ``seen`` records ``(group, noise)`` of every training_step call.
    """

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        m = config.model
        self.trunk = nn.Conv2d(m.in_channels, m.channels[0], 3, padding=1)
        self.head_main = nn.Conv2d(m.channels[0], m.out_channels, 3, padding=1)
        self.head_aux = nn.Conv2d(m.channels[0], m.out_channels, 3, padding=1)
        self.seen: list[tuple[str, torch.Tensor]] = []

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        trunk = list(self.trunk.parameters())
        return {"main": trunk + list(self.head_main.parameters()), "aux": trunk + list(self.head_aux.parameters())}

    def optim_settings(self) -> dict:
        from medgen.methods.base import GroupSettings

        return {"aux": GroupSettings(lr=0.5 * self.config.train.lr, betas=(0.5, 0.9), every=2, shared=True)}

    def begin_step(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        noise = 0.1 * torch.randn(batch.source.shape, generator=generator, device=batch.source.device)
        return replace(batch, meta={**batch.meta, "noise": noise})

    def _features(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        jitter = 0.01 * torch.randn(batch.source.shape, generator=generator, device=batch.source.device)
        return F.silu(self.trunk(batch.source + batch.meta["noise"] + jitter))

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict:
        _sleep()
        self.seen.append((group, batch.meta["noise"]))
        h = self._features(batch, generator)
        main = self.head_main(h)
        if group == "main":
            return {"loss": F.mse_loss(main, batch.target)}
        return {"loss": F.mse_loss(self.head_aux(h), main.detach()), "gap": (self.head_aux(h) - main).abs().mean()}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return self.head_aux(F.silu(self.trunk(source)))


@_register(registry.METHODS, "test_identity")
class TinyIdentity(Method):
    """No parameters and no optimiser groups, like the trivial baselines: fit() has nothing to do."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {}

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator=None, callback=None, **options) -> torch.Tensor:
        return source.clone()


class TinyPairs(Dataset):
    """``n`` random paired 1-channel images; target = 0.2 - 0.5 * source. One patient per item."""

    def __init__(self, n: int = 16, size: int = 8, seed: int = 0, first_patient: int = 0) -> None:
        self.n, self.size, self.seed, self.first_patient = n, size, seed, first_patient

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + i)
        source = torch.rand(1, self.size, self.size, generator=gen) * 2 - 1
        return {"source": source, "target": 0.2 - 0.5 * source, "patient_id": f"p{self.first_patient + i}"}

    @property
    def patient_ids(self) -> list[str]:
        """Patient id of every item."""
        return [f"p{self.first_patient + i}" for i in range(self.n)]

    @property
    def split_hash(self) -> str:
        """Hash of the patient ids of this split."""
        return hashlib.sha256(",".join(self.patient_ids).encode()).hexdigest()[:12]


@_register(registry.DATASETS, "test_pairs")
def make_pairs(cfg: DataConfig, split: str) -> TinyPairs:
    """Train patients p0.., test patients p10000.. (disjoint)."""
    train = split == "train"
    return TinyPairs(cfg.n_train if train else cfg.n_test, cfg.image_size, cfg.split_seed + (0 if train else 1),
                     0 if train else 10_000)


@_register(registry.DATASETS, "test_pairs_leaky")
def make_leaky_pairs(cfg: DataConfig, split: str) -> TinyPairs:
    """Test patients p2.. overlap the training patients p0.. ."""
    train = split == "train"
    return TinyPairs(cfg.n_train if train else cfg.n_test, cfg.image_size, 0 if train else 1, 0 if train else 2)


def tiny_config(method: str = "test_regressor", dataset: str = "test_pairs", **train: object) -> RunConfig:
    """A RunConfig for the tiny methods; ``train`` overrides TrainConfig fields."""
    base = TrainConfig(steps=6, batch_size=4, lr=1e-2, ema_decay=0.9, grad_clip=1.0, log_every=1, num_threads=1)
    return RunConfig(name="unit", preset="ci", method=method, seed=0,
                     data=DataConfig(dataset=dataset, image_size=8, n_train=10, n_test=4),
                     model=UNetConfig(channels=(4,), attention_levels=(False,), norm_groups=1),
                     train=replace(base, **train))


def build(cfg: RunConfig, seed: int = 0) -> tuple[Method, TinyPairs]:
    """Seeded method and training dataset of ``cfg``."""
    from medgen.utils import seed_everything

    seed_everything(seed)
    method = registry.lookup(registry.METHODS, cfg.method)(cfg)
    return method, registry.lookup(registry.DATASETS, cfg.data.dataset)(cfg.data, "train")


def wait_for_step(run_dir: str | os.PathLike, min_step: int, timeout: float = 120.0) -> int:
    """Poll until ``run_dir/latest`` names a checkpoint of at least ``min_step`` steps; return its step."""
    from medgen.checkpoint import CheckpointError, latest_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ckpt = latest_checkpoint(run_dir)
        except CheckpointError:
            ckpt = None
        if ckpt is not None and int(ckpt.name.split("_")[1]) >= min_step:
            return int(ckpt.name.split("_")[1])
        time.sleep(0.02)
    raise TimeoutError(f"{run_dir}: no checkpoint of step >= {min_step} after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    """Script entry: train a tiny method into OUT_DIR (single process or under torchrun)."""
    from medgen.train import fit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--method", default="test_regressor")
    args = p.parse_args(argv)
    os.environ[SLEEP_ENV] = str(args.sleep)
    cfg = tiny_config(args.method, steps=args.steps, batch_size=args.batch, grad_accum=args.accum,
                      ckpt_every=args.ckpt_every)
    method, data = build(cfg)
    result = fit(method, data, cfg.train, out_dir=args.out_dir, run_config=cfg, seed=cfg.seed, progress=False,
                 device="cpu")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done step={result.step} checkpoint={result.checkpoint}", flush=True)


if __name__ == "__main__":
    main()
