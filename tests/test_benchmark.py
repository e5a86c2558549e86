"""The speed benchmark runs end to end on the tiny ``ci`` preset and writes the report schema.

No timing assertions: the numbers of a ``--quick`` run at ``ci`` size mean nothing; only the
code path and the CSV / markdown contract (DESIGN.md) are checked.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from benchmark import harness, speed

GOAL = re.compile(r"^(report|(<=|>=) \S+)$")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ``benchmark.speed --quick`` at the ``ci`` preset into a temporary folder."""
    tmp = tmp_path_factory.mktemp("speed")
    # One thread: on a loaded 2-core machine a 2-thread run of this tiny model stalls 10-50x.
    argv = ["--quick", "--preset", "ci", "--quality-preset", "ci", "--batch", "4", "--steps", "3",
            "--repeats", "1", "--threads", "1", "--root", str(tmp / "runs"), "--out", str(tmp / "out")]
    assert speed.main(argv) == 0
    return tmp / "out"


def test_csv_schema(report: Path) -> None:
    df = pd.read_csv(report / "speed.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"]
    assert df["measure"].is_unique
    for measure in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert df["measure"].str.startswith(measure).any(), measure
    for row in df.itertuples():
        value = float(row.value)
        assert GOAL.match(row.goal), row
        if row.goal == "report":
            assert row.holds == "", row
        else:
            assert row.holds in ("True", "False"), row
            if not math.isnan(value):
                op, threshold = row.goal.split()
                expected = value <= float(threshold) if op == "<=" else value >= float(threshold)
                assert str(expected) == row.holds, row


def test_markdown_has_the_same_rows(report: Path) -> None:
    df = pd.read_csv(report / "speed.csv", keep_default_na=False)
    lines = [ln for ln in (report / "speed.md").read_text().splitlines() if ln.startswith("| ")]
    assert lines[0] == "| measure | value | unit | goal | holds |"
    measures = [ln.split(" | ")[0][2:].replace("\\|", "|") for ln in lines[1:]]
    assert measures == list(df["measure"])


def test_goal_row_and_nfe_rule() -> None:
    assert harness.goal_row("x", 1.02, "x", "<=", 1.03).holds is True
    assert harness.goal_row("x", float("nan"), "NFE", "<=", 25).holds is False
    psnrs = {5: 20.5, 10: 19.9, 20: 20.0}
    assert speed.smallest_nfe(psnrs, 20.0, two_sided=False) == 5  # one-sided: higher PSNR counts as matched
    assert speed.smallest_nfe(psnrs, 20.0, two_sided=True) == 10
    assert math.isnan(speed.smallest_nfe({5: 18.0}, 20.0, two_sided=False))


def test_phantom_benchmark_quick(tmp_path: Path) -> None:
    """``benchmark.phantoms --quick`` on one phantom writes the report schema with a goal row per preset."""
    from benchmark import phantoms

    argv = ["--quick", "--phantoms", "lung", "--presets", "smoke", "--threads", "1", "--out", str(tmp_path)]
    assert phantoms.main(argv) == 0
    df = pd.read_csv(tmp_path / "phantoms.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"]
    assert df["measure"].tolist() == ["lung smoke (32x32): generation", "lung smoke (32x32): training step consumes",
                                      "lung smoke (32x32): generation / consumption"]
    gen, use, ratio = df["value"].astype(float)
    assert gen > 0 and use > 0 and math.isclose(ratio, gen / use, rel_tol=1e-4)  # one round: the ratio of the two
    assert df["goal"].iloc[2] == ">= 20" and df["holds"].iloc[2] in ("True", "False")
    assert (tmp_path / "phantoms.md").read_text().startswith("# Phantom generation speed")


@pytest.mark.slow
def test_metrics_benchmark_quick(tmp_path: Path) -> None:
    """``benchmark.metrics`` on tiny inputs writes the report schema: goal rows hold or not, values agree."""
    from benchmark import metrics

    argv = ["--quick", "--fid-images", "2", "--fid-sizes", "64", "--ssim-batch", "2", "--threads", "1",
            "--out", str(tmp_path)]
    assert metrics.main(argv) == 0
    df = pd.read_csv(tmp_path / "metrics.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"] and df["measure"].is_unique
    goals = df[df["goal"] != "report"]
    assert len(goals) == 6 and set(goals["holds"]) <= {"True", "False"}  # time ratio + value per comparison
    for tag in ("SSIM 256x256, batch 2 vs skimage", "MS-SSIM 256x256, batch 2 vs MONAI",
                "FID 64x64 (2 vs 2 images)"):
        assert df["measure"].str.startswith(tag + ":").sum() >= 5, tag
    diffs = goals[goals["measure"].str.contains(r"\|medgen - ")]
    assert (diffs["holds"] == "True").all(), diffs  # the implementations agree (timings may not hold)
    fid = dict(zip(df["measure"], df["value"].astype(float)))
    assert fid["FID 64x64 (2 vs 2 images): medgen FID"] > 1.0  # noisy vs clean images: far from 0
    assert (tmp_path / "metrics.md").read_text().startswith("# Metrics benchmark")


def test_translation_benchmark_quick(tmp_path: Path) -> None:
    """``benchmark.translation`` on a few ``ci`` translators writes report rows that agree with each other."""
    from benchmark import translation

    argv = ["--quick", "--preset", "ci", "--models", "ddim_noise,pix2pix_unet,ddim_noise_3d,pix2pix_3d",
            "--batches", "1,2", "--ddpm-steps", "8", "--threads", "1", "--out", str(tmp_path)]
    assert translation.main(argv) == 0
    df = pd.read_csv(tmp_path / "translation.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"] and df["measure"].is_unique
    assert set(df["goal"]) == {"report"} and set(df["holds"]) == {""}
    v = dict(zip(df["measure"], df["value"].astype(float)))
    assert all(x > 0 for k, x in v.items() if "IQR" not in k)
    p2, p3 = "2D 32x32, batch", "3D 32x32x16, batch 1"
    ddim, gan = v[f"{p2} 2: ddim_noise (DDIM t=4)"], v[f"{p2} 2: pix2pix_unet (one unet generator pass)"]
    # one round: the median per-round ratio is the ratio of the two times (same batch, s/slice)
    ratio = v[f"{p2} 2 time ddim_noise / pix2pix_unet: median of per-round ratios"]
    assert ratio == pytest.approx(ddim / gan, rel=1e-3)
    assert v["2D batching gain ddim_noise: s/slice at batch 1 / at batch 2"] == pytest.approx(
        v[f"{p2} 1: ddim_noise (DDIM t=4)"] / ddim, rel=1e-3)
    assert v[f"{p3}: ddim_noise_3d (DDIM t=4)"] / v[f"{p3}: pix2pix_3d (one unet generator pass)"] == pytest.approx(
        v[f"{p3} time ddim_noise_3d / pix2pix_3d: median of per-round ratios"], rel=1e-3)
    ddpm, ddim_same = v[f"{p2} 1: ddim_noise network, DDPM t=8 (T=100)"], \
        v[f"{p2} 1: ddim_noise network, DDIM t=4 (same rounds as DDPM)"]
    assert v[f"{p2} 1 time DDPM t=8 / DDIM t=4 (step ratio 2): median of per-round ratios"] == pytest.approx(
        ddpm / ddim_same, rel=1e-3)
    assert v[f"{p2} 1: time per step, DDPM / DDIM"] == pytest.approx(ddpm / ddim_same / 2, rel=1e-3)
    assert (tmp_path / "translation.md").read_text().startswith("# Translation speed")
    with pytest.raises(ValueError, match="unknown translator 'segmenter'"):
        translation.selected("ddim_noise,segmenter")


def test_lung_us_benchmark_quick(tmp_path: Path) -> None:
    """``benchmark.lung_us`` on the ``ci`` prior writes report rows that agree with each other, and its
    arms time what they claim: scale 0 is the prior's own sampling, scale 10 is actually guided."""
    import torch

    from benchmark import lung_us

    argv = ["--quick", "--preset", "ci", "--batches", "1,2", "--ddim-steps", "3", "--fast-steps", "2",
            "--recon-steps", "3", "--operators", "us_linear,inpaint", "--op-calls", "2", "--net-calls", "1",
            "--paper-preset", "smoke", "--paper-steps", "1", "--threads", "1", "--out", str(tmp_path)]
    assert lung_us.main(argv) == 0
    df = pd.read_csv(tmp_path / "lung_us.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"] and df["measure"].is_unique
    assert set(df["goal"]) == {"report"} and set(df["holds"]) == {""}
    v = dict(zip(df["measure"], df["value"].astype(float)))
    assert all(x > 0 for k, x in v.items() if "IQR" not in k)
    med = ": median of per-round ratios"
    # (g) one round: images/s = batch / (steps x s/step); the ratios are those of the single times
    for batch in (1, 2):
        g = f"(g) generate ci 32x32, batch {batch}"
        ddim, fast = v[f"{g}: DDIM-3 time per step"], v[f"{g}: DPM-Solver++ 2M-2 time per step"]
        assert v[f"{g}: DDIM-3 (eta 0) images/s"] == pytest.approx(batch / (3 * ddim / 1e3), rel=1e-3)
        assert v[f"{g}: DPM-Solver++ 2M-2 images/s"] == pytest.approx(batch / (2 * fast / 1e3), rel=1e-3)
        assert v[f"{g} time per step DPM-Solver++ 2M-2 / DDIM-3{med}"] == pytest.approx(fast / ddim, rel=1e-3)
        assert v[f"{g} time DDIM-3 / DPM-Solver++ 2M-2 (fast-solver speed-up){med}"] == pytest.approx(
            3 * ddim / (2 * fast), rel=1e-3)
    assert v["(g) generate ci 32x32, batching gain DDIM-3: images/s at batch 2 / at batch 1"] == pytest.approx(
        v["(g) generate ci 32x32, batch 2: DDIM-3 (eta 0) images/s"]
        / v["(g) generate ci 32x32, batch 1: DDIM-3 (eta 0) images/s"], rel=1e-3)
    # (r) same steps on both sides: the time ratio is the per-step ratio
    r = "(r) reconstruct ci 32x32, batch 1"
    dps = "DDPM-3"  # DPS's own sampler (medgen.methods.ddpm.DPS_SAMPLER), ancestral
    unguided = v[f"{r}: unguided {dps} (scale 0)"]
    assert v[f"{r}: unguided time per step"] == pytest.approx(unguided * 1e3 / 3, rel=1e-3)
    for op in ("us_linear", "inpaint"):
        guided = v[f"{r}: DPS {op} {dps} (scale 10)"]
        assert v[f"{r}: DPS {op} time per step"] == pytest.approx(guided * 1e3 / 3, rel=1e-3)
        assert v[f"{r} time per step DPS {op} / unguided{med}"] == pytest.approx(guided / unguided, rel=1e-3)
    assert not any("blur" in k or "us_acoustic" in k for k in v)  # only the chosen operators
    # (o) per-call ratios against the network forward
    o = "(o) per call ci 32x32, batch 1"
    net = v[f"{o}: network forward"]
    assert v[f"{o} network forward+backward / network forward{med}"] == pytest.approx(
        v[f"{o}: network forward+backward"] / net, rel=1e-3)
    assert v[f"{o} inpaint forward+backward / network forward{med}"] == pytest.approx(
        v[f"{o}: inpaint forward+backward"] / net, rel=1e-3)
    # (p) the large-network round ran on the smoke prior (1.5 M parameters): its ratio is guided / unguided
    p = next(k.split(":")[0] for k in v if k.startswith("(p) smoke 32x32"))
    assert v[f"{p}: time per step DPS us_linear / unguided (one round)"] == pytest.approx(
        v[f"{p}: DPS us_linear time per step (1 steps, one round)"]
        / v[f"{p}: unguided time per step (1 steps, one round)"], rel=1e-3)
    assert (tmp_path / "lung_us.md").read_text().startswith("# Lung-ultrasound prior speed")
    # the arms: scale 0 reproduces generate() from the same seed (same x_T, DDIM eta 0); scale 10 moves it
    torch.set_num_threads(1)
    prior = lung_us.build("ci")
    generated = lung_us.generation_arm(prior, 1, "ddim", 3)()  # [1, 1, 32, 32]
    plain = lung_us.reconstruction_arm(prior, "us_linear", 0.0, "ddim", 3)()  # [n_samples 1, 1, 1, 32, 32]
    guided = lung_us.reconstruction_arm(prior, "us_linear", 10.0, "ddim", 3)()
    assert generated.shape == (1, 1, 32, 32) and plain.shape == guided.shape == (1, 1, 1, 32, 32)
    assert torch.equal(plain[0], generated) and not torch.allclose(guided, plain, atol=1e-3)
    with pytest.raises(ValueError, match="unknown operator 'deblur'"):
        lung_us.selected("us_linear,deblur")


def test_latent_benchmark_quick(tmp_path: Path) -> None:
    """``benchmark.latent`` at ``ci`` writes report rows that agree with each other; the pixel twin is the same
    UNet on the image's channels, the latent model samples images of the same shape."""
    import torch

    from benchmark import latent

    argv = ["--quick", "--preset", "ci", "--sample-batch", "2", "--threads", "1", "--out", str(tmp_path)]
    assert latent.main(argv) == 0
    df = pd.read_csv(tmp_path / "latent.csv", keep_default_na=False)
    assert list(df.columns) == ["measure", "value", "unit", "goal", "holds"] and df["measure"].is_unique
    assert set(df["goal"]) == {"report"} and set(df["holds"]) == {""}
    v = dict(zip(df["measure"], df["value"].astype(float)))
    assert all(x > 0 for k, x in v.items() if "IQR" not in k)
    t = "training step, 16x16 px, latent 2x8x8, batch 8"
    assert v[f"{t} speed-up pixel / latent: median of per-round ratios"] == pytest.approx(
        v[f"{t}: pixel cDDPM"] / v[f"{t}: latent cDDPM (encodes target and source)"], rel=1e-3)
    s = "sample, 16x16 px, latent 2x8x8, DDIM t=4, batch 2"
    assert v[f"{s} speed-up pixel / latent: median of per-round ratios"] == pytest.approx(
        v[f"{s}: pixel cDDPM"] / v[f"{s}: latent cDDPM (encode source, sample, decode)"], rel=1e-3)
    assert (tmp_path / "latent.md").read_text().startswith("# Latent vs pixel diffusion speed")
    torch.set_num_threads(1)
    pixel, lat, _ = latent.build("ci")
    assert pixel.cfg.parents == {} and pixel.cfg.model.channels == lat.cfg.model.channels
    assert pixel.cfg.model.in_channels == 1 and lat.cfg.model.in_channels == 2
    assert pixel.sample_arm(2)().shape == lat.sample_arm(2)().shape == (2, 1, 16, 16)
