"""mri_to_ct experiment: per-preset plans, Table 1 rows under the paper's zeroing mask (2D and the sagittal
slices of volumes), Dice rows (per-vertebra units), table assembly with "(paper)" rows only, paired tests with
Holm, the ablation grid (one change at a time) and the four findings both ways on hand-made rows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from medgen import zoo
from medgen.config import get_preset
from medgen.evaluate import evaluate
from medgen.experiments import mri_to_ct as exp
from medgen.metrics.structure import spine_mask
from medgen.presets.mri_to_ct import task


# --------------------------------------------------------------------------------------
# Plans and configs
# --------------------------------------------------------------------------------------
def test_plan_per_preset():
    ci = exp.plan("ci", contrast="both")
    assert ci.contrasts == ("t2w",) and ci.one_thread and set(ci.ablation) < {a for a, _ in exp.ABLATION}
    smoke = exp.plan("smoke", methods=["ddim_image", "pix2pix_3d"], n_test=5)
    assert smoke.contrasts == ("t1w", "t2w") and smoke.methods_2d == ("ddim_image",)
    assert smoke.methods_3d == ("pix2pix_3d",) and smoke.n_test == 5 and smoke.n_test_3d <= 5
    assert smoke.steps == exp.SMOKE_STEPS
    cpu = exp.plan("cpu")
    assert not cpu.steps and not cpu.n_train and not cpu.one_thread
    assert cpu.methods_2d == exp.METHODS_2D and cpu.methods_3d == exp.METHODS_3D
    with pytest.raises(ValueError, match="contrast"):
        exp.plan("ci", contrast="pd")
    with pytest.raises(ValueError, match="method"):
        exp.plan("ci", methods=["cyclegan"])


def test_configs_keep_presets_at_cpu_and_shorten_smoke():
    cpu, preset = exp.model_config(exp.plan("cpu"), "ddim_image", "t1w"), get_preset("cpu", task("ddim_image"))
    assert cpu.train == preset.train and cpu.model == preset.model and cpu.data.source == "t1w"
    smoke = exp.model_config(exp.plan("smoke"), "cut_resnet", "t2w")
    assert smoke.train.steps == exp.SMOKE_STEPS["gan_unpaired"] and smoke.train.num_threads == 1
    assert smoke.data.n_train == exp.SMOKE_N_TRAIN["2d"] and smoke.data.dataset == "unpaired"
    assert exp.model_config(exp.plan("smoke"), "ddim_image_3d").train.steps == exp.SMOKE_STEPS["3d"]
    for label, mode in exp.REGISTRATIONS.items():
        reg = exp.registration_config(exp.plan("smoke"), label)
        vol = get_preset("smoke", task("ddim_image_3d")).data
        assert reg.data.dataset == "volume_slices" and reg.data.registration == mode
        assert (reg.data.image_size, reg.data.depth) == (vol.image_size, vol.depth) and reg.model.spatial_dims == 2
    with pytest.raises(ValueError, match="registration"):
        exp.registration_config(exp.plan("ci"), "three")
    assert exp.segmenter_config(exp.plan("smoke"), volume=True).train.steps == exp.SMOKE_STEPS["segmenter_3d"]


def test_ablation_changes_one_parameter_at_a_time():
    settings = exp.ablation_settings(exp.plan("smoke"))
    assert len(settings) == len(exp.ABLATION)
    for label, opts in settings:
        changed = {k for k in exp.BASE_DDIM if opts[k] != exp.BASE_DDIM[k]}
        assert len(changed) <= 1
        t, eta, w = (float(part.split("=")[1]) for part in label.split(", "))
        assert (opts["steps"], opts["eta"], opts["guidance_scale"]) == (t, eta, w)
    cfg = exp.model_config(exp.plan("ci"), "ddim_noise")
    assert exp.ddpm_options(cfg) == {"sampler": "ddpm", "steps": cfg.diffusion.timesteps, "guidance_scale": 0.0}


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------
def _item(pid: str, size: int = 16, value: float = 0.5) -> dict:
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[6:10, 6:10] = 11
    mask = torch.zeros(1, size, size)
    mask[:, 4:12, 4:12] = 1.0  # a hand-made "spine mask": 64 of 256 pixels kept
    return {"source": torch.zeros(1, size, size), "target": torch.full((1, size, size), value), "mask": mask,
            "patient_id": pid, "labels_mri": labels, "complete": torch.tensor([True] + [False] * 9)}


def test_quality_rows_zero_outside_the_mask():
    items = [_item("a"), _item("b")]
    preds = torch.stack([it["target"] for it in items]) + 0.2  # error 0.2 everywhere
    rows = exp.quality_rows(preds, items, method="M", contrast="t2w", metrics=("mae", "mse", "psnr"))
    mean = rows.groupby("metric")["value"].mean()
    # outside the mask both images are set to FILL (equal): only the 64 kept pixels carry the 0.2 error
    assert mean["mae"] == pytest.approx(0.2 * 64 / 256)
    assert mean["mse"] == pytest.approx(0.04 * 64 / 256)
    assert mean["psnr"] == pytest.approx(10 * math.log10(4 / (0.04 * 64 / 256)))
    assert set(rows["method"]) == {"M"} and set(rows["dims"]) == {"2D"} and set(rows["data_range"]) == {2.0}
    assert "vifp" not in exp.quality_metrics(32) and "vifp" in exp.quality_metrics(64)


def test_quality_rows_volumes_score_spine_slices_per_volume():
    d, size = 4, 16
    labels = torch.zeros(d, size, size, dtype=torch.long)
    labels[1, 6:10, 6:10] = 11  # spine on slices 1 and 2 only
    labels[2, 6:10, 6:10] = 12
    vol = {"source": torch.zeros(1, d, size, size), "target": torch.zeros(1, d, size, size), "patient_id": "v",
           "labels_mri": labels}
    preds = torch.zeros(1, 1, d, size, size)
    preds[0, 0, 1] = 0.1   # slice 1: error 0.1 everywhere (kept only within 10 px of the spine)
    preds[0, 0, 3] = 0.9   # slice 3 has no spine: not scored
    rows = exp.quality_rows(preds, [vol], method="3D", contrast="t2w", dims="3D", metrics=("mae",))
    assert len(rows) == 2 and set(rows["patient_id"]) == {"v"}
    kept = spine_mask(labels[1][None], 10).mean().item()
    assert sorted(rows["value"]) == pytest.approx(sorted([0.0, 0.1 * kept]))


class _Identity:
    """The translator the notebook used to score given translations through evaluate (before score existed)."""

    def translate(self, source, **_):
        return source


def test_quality_rows_score_what_evaluate_scored():
    rng = torch.Generator().manual_seed(0)
    items = [dict(_item(f"s{i}"), target=torch.rand(1, 16, 16, generator=rng) * 2 - 1) for i in range(20)]
    preds = torch.rand(20, 1, 16, 16, generator=rng) * 2 - 1
    rows = exp.quality_rows(preds, items, method="M", contrast="t2w", metrics=("mae", "psnr", "ssim"))
    given = [{**it, "source": preds[i]} for i, it in enumerate(items)]
    old = evaluate(_Identity(), given, ("mae", "psnr", "ssim"), mask_mode="zero", fill=exp.FILL)
    pd.testing.assert_frame_equal(rows[list(old.columns)], old)


def test_rows_for_selects_in_order_and_drops_the_ceiling():
    dice = pd.DataFrame({"method": ["A", exp.REAL_CT, "B", "A"], "contrast": ["t1w", "t2w", "t2w", "t2w"],
                         "setting": ["2D", "2D", "3D", "2D slice-wise"], "metric": "dice_volume", "value": 1.0})
    assert list(exp.rows_for(dice, contrast="t2w", setting="2D")["method"]) == [exp.REAL_CT]
    assert exp.rows_for(dice, contrast="t2w", setting="2D", real=False).empty
    assert list(exp.rows_for(dice, setting=("3D", "2D slice-wise")).index) == [2, 3]
    assert exp.rows_for(dice, registration="two").empty  # a column the frame lacks selects nothing


def test_figure_columns_from_items():
    items = [_item("a"), _item("b", value=0.1)]
    cols = exp.figure_columns(items, {"M": torch.ones(2, 1, 16, 16)}, n=1)
    assert list(cols) == ["input (MRI)", "M", "reference CT"]
    assert all(c.shape == (1, 1, 16, 16) for c in cols.values()) and float(cols["reference CT"].mean()) == 0.5


def test_dice_rows_units_and_perfect_prediction():
    items = [_item("a"), _item("b")]
    ref = torch.stack([it["labels_mri"] for it in items])
    rows = exp.dice_rows(ref.clone(), items, method="M", contrast="t1w")
    assert set(rows["metric"]) == set(exp.DICE_METRICS) and (rows.loc[rows.metric == "dice_volume", "value"] == 1).all()
    vert = rows[rows.metric == "dice_vertebra"]
    assert sorted(vert["patient_id"]) == ["a/v0", "b/v0"]
    assert rows.attrs["measurer"] == exp.MEASURER_NOTE
    half = ref.clone()
    half[:, 6:8, 6:10] = 0  # half of the body missing: Dice 2 * 8 / (8 + 16)
    rows = exp.dice_rows(half, items, method="M", contrast="t1w")
    assert rows.loc[rows.metric == "dice_volume", "value"].to_numpy() == pytest.approx([2 / 3, 2 / 3])
    # posterior elements: none in either map -> NaN, not 0
    assert rows.loc[rows.metric == "dice_posterior_volume", "value"].isna().all()


# --------------------------------------------------------------------------------------
# Tables: our rows from the data, the paper's only as "(paper)" rows
# --------------------------------------------------------------------------------------
def _tidy(groups: dict[str, list[float]], metric: str, *, by: str = "method", **extra) -> pd.DataFrame:
    rows = [{by: g, "patient_id": f"s{i}", "metric": metric, "value": v, **extra}
            for g, values in groups.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_quality_table_paper_rows_are_labelled_and_separate():
    rows = _tidy({"DDIM image": [20.0, 22.0], "Pix2Pix UNet": [18.0, 19.0]}, "psnr", contrast="t1w", dims="2D")
    cells = exp.quality_table(rows, "t1w").cells()
    labels = list(cells.iloc[:, 0])
    assert labels[:2] == ["DDIM image", "DDIM image (paper)"]
    ours = cells[cells.iloc[:, 0] == "DDIM image"].iloc[0, 1]
    paper = cells[cells.iloc[:, 0] == "DDIM image (paper)"].iloc[0, 1]
    assert ours.startswith("**21.00") and paper == f"{exp.PAPER_TABLE1['t1w']['DDIM image']['psnr']:.2f}"
    assert all(not lab.endswith("(paper)") or lab[:-8] in exp.PAPER_TABLE1["t1w"] for lab in labels)
    # the paper's numbers never enter our headline metrics
    head = exp.headline_metrics(rows, _tidy({"DDIM image": [0.5, 0.7]}, "dice_volume", contrast="t1w", setting="2D"))
    assert head["DDIM image [t1w, 2D]"]["psnr"] == 21.0 and head["DDIM image [t1w, 2D]"]["dice_volume"] == 0.6


def test_dice_tables_filter_paper_rows_by_dims():
    rows = _tidy({"Pix2Pix 3D": [0.5, 0.6]}, "dice_posterior_volume", contrast="t2w", setting="3D")
    rows = pd.concat([rows, rows.assign(metric="dice_posterior_vertebra")])
    labels = list(exp.dice_table(rows, "t2w", posterior=True, dims="3D").cells().iloc[:, 0])
    assert "Pix2Pix 3D (paper)" in labels and "DDIM image (paper)" not in labels
    labels2 = list(exp.dice_table(rows, "t2w", posterior=True, dims="2D").cells().iloc[:, 0])
    assert "DDIM image (paper)" in labels2 and "Pix2Pix 3D (paper)" not in labels2
    assert exp.PAPER_TABLE3["t2w"]["SynDiff (unpaired)"]["dice_posterior_volume"] == 0.63  # copied from Table 3
    assert exp.PAPER_TABLE2["t1w"]["CUT SA-UNet (unpaired)"] == {"dice_volume": 0.09, "dice_vertebra": 0.08}
    assert exp.PAPER_TABLE_S1["t2w"]["DDIM noise DDPM"]["psnr"] == 26.87


# --------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------
def test_paired_comparisons_holm_over_the_family():
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, 8)
    groups = {"A": base + 1.0 + rng.normal(0, 0.1, 8), "B": base + rng.normal(0, 0.5, 8), "C": base}
    rows = _tidy({k: list(v) for k, v in groups.items()}, "psnr")
    out = exp.paired_comparisons(rows, [("A", "B"), ("A", "C")], "psnr", family="f")
    raw = [stats.ttest_rel(groups["A"], groups[b]).pvalue for b in ("B", "C")]
    assert out["t_p"].to_numpy() == pytest.approx(raw)
    order = np.argsort(raw)
    expected = np.empty(2)
    expected[order[0]] = min(1, 2 * raw[order[0]])
    expected[order[1]] = min(1, max(expected[order[0]], raw[order[1]]))
    assert out["t_p_holm"].to_numpy() == pytest.approx(expected)
    few = exp.paired_comparisons(rows[rows.patient_id.isin(["s0", "s1"])], [("A", "B")], "psnr")
    assert few["n"].iloc[0] == 2 and np.isnan(few["t_p"].iloc[0])


# --------------------------------------------------------------------------------------
# Findings, both ways
# --------------------------------------------------------------------------------------
def _frames(good: bool):
    rng = np.random.default_rng(1)
    n = 8
    noise = lambda s=0.01: rng.normal(0, s, n)  # noqa: E731
    dice = []
    for c in ("t1w", "t2w"):
        groups = {exp.LABELS[m]: list(0.75 + noise()) for m in exp.PAIRED}
        groups.update({exp.LABELS[m]: list((0.3 if good else 0.8) + noise()) for m in exp.UNPAIRED_CUT})
        dice.append(_tidy(groups, "dice_volume", contrast=c, setting="2D"))
    dice.append(_tidy({"DDIM 3D image": list((0.7 if good else 0.4) + noise())}, "dice_posterior_volume",
                      contrast="t2w", setting="3D"))
    dice.append(_tidy({"Pix2Pix UNet 2D (slice-wise)": list(0.55 + noise())}, "dice_posterior_volume",
                      contrast="t2w", setting="2D slice-wise"))
    dice.append(_tidy({exp.REAL_CT: [0.99] * n}, "dice_posterior_volume", contrast="t2w", setting="3D"))
    quality = pd.concat([_tidy({"DDIM image": list((27.9 if good else 25.0) + noise(0.1)),
                                "DDIM noise": list(27.6 + noise(0.1))}, "psnr", contrast=c, dims="2D")
                         for c in ("t1w", "t2w")])
    reg = {"none": 0.3, "one": 0.68, "two": 0.73 if good else 0.60}
    registration = pd.concat([_tidy({r: list(v + noise())}, "dice_volume", by="registration")
                              for r, v in reg.items()])
    return quality, pd.concat(dice, ignore_index=True), registration


def test_findings_hold_on_paper_like_rows():
    quality, dice, registration = _frames(good=True)
    found = exp.findings(quality, dice, registration)
    assert list(found) == list(exp.FINDINGS)
    assert all(holds for holds, _ in found.values()), found
    mean3d = dice.loc[dice.method == "DDIM 3D image", "value"].mean()
    assert f"DDIM 3D image {mean3d:.3f}" in found["threed_ge_twod_posterior_dice"][1]
    assert "dB" in found["ddim_image_ge_noise_psnr"][1]


def test_findings_fail_when_the_rows_say_otherwise():
    quality, dice, registration = _frames(good=False)
    found = exp.findings(quality, dice, registration)
    assert not any(holds for holds, _ in found.values()), found
    # the real-CT ceiling row (0.99) is not a 3D method
    assert exp.REAL_CT not in found["threed_ge_twod_posterior_dice"][1]


def test_findings_need_their_rows():
    quality, dice, _ = _frames(good=True)
    only_paired = dice[~dice["method"].isin([exp.LABELS[m] for m in exp.UNPAIRED_CUT])]
    found = exp.findings(quality[quality.method == "DDIM image"], only_paired[only_paired.setting == "2D"], None)
    assert all(not holds and text.startswith("not evaluated") for holds, text in found.values())


def test_standard_comparisons_families():
    quality, dice, registration = _frames(good=True)
    tests = exp.standard_comparisons(quality, dice, registration.assign(metric="dice_volume"))
    fams = set(tests["family"])
    assert {"PSNR t1w", "PSNR t2w", "Dice t1w", "Dice t2w", "3D vs 2D"} <= fams
    assert len(tests[tests.family == "Dice t2w"]) == len(exp.PAIRED) * len(exp.UNPAIRED_CUT)
    assert exp.REAL_CT not in set(tests["a"]) | set(tests["b"])


def test_cpu_resolves_the_shipped_checkpoints_only_when_configs_match():
    cpu, smoke = exp.plan("cpu"), exp.plan("smoke")
    assert zoo.shipped(exp.model_config(cpu, "ddim_image", "t1w")).name == "ddim_image-t1w"
    assert zoo.shipped(exp.model_config(cpu, "pix2pix_unet", "t2w")).name == "pix2pix_unet-t2w"
    assert zoo.shipped(exp.segmenter_config(cpu)).name == "segmenter"
    assert zoo.shipped(exp.model_config(smoke, "ddim_image", "t1w")) is None  # shortened: other config
    assert zoo.shipped(exp.model_config(cpu, "ddim_noise", "t1w")) is None  # none shipped
