"""lung_us experiment: per-preset plans, the section-2 evaluation (category shares, KS, FID table with the
floor, audit by category with uncalibrated categories counted, flag table with the paper column), the
findings both ways on hand-made frames, headline metrics, and one tiny end-to-end run (16 px, 2-step
training) of generation, audit and reconstruction."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from medgen import zoo
from medgen.data.phantoms import lung
from medgen.experiments import lung_us as exp


# --------------------------------------------------------------------------------------
# Section 2 pieces on synthetic inputs
# --------------------------------------------------------------------------------------
def _set(cats, aer=None, n_pix=16) -> exp.LungSet:
    cats = np.asarray(cats, dtype=np.int64)
    aer = np.asarray(aer if aer is not None else 0.3 + 0.3 * cats, float)
    return exp.LungSet(torch.zeros(len(cats), 1, n_pix, n_pix), aer, cats, None, [f"s{i}" for i in range(len(cats))])


def test_category_proportions_and_ks():
    props = exp.category_proportions({"a": [0, 0, 1, 2], "b": [2, 2, 2, 2]})
    assert props["a"].tolist() == [0.5, 0.25, 0.25] and props["b"].tolist() == [0.0, 0.0, 1.0]
    x = np.linspace(0.3, 0.9, 50)
    d, p = exp.aeration_ks(x, x)
    assert d == 0.0 and p == pytest.approx(1.0)
    d, p = exp.aeration_ks(x, x + 1.0)  # disjoint samples: D = 1
    assert d == 1.0 and p < 1e-10
    with pytest.raises(ValueError, match="empty"):
        exp.category_proportions({"a": []})


def test_aeration_table_shares_and_ks_row():
    real = _set([0, 0, 1, 1, 1, 2], aer=[0.4, 0.5, 0.7, 0.75, 0.8, 0.9])
    gen = _set([1, 1], aer=[0.7, 0.72])
    tab = exp.aeration_table(real, gen)
    per = tab[tab.category != "all"].set_index("category")
    assert per["share_real"].tolist() == pytest.approx([2 / 6, 3 / 6, 1 / 6])
    assert per["share_generated"].tolist() == [0.0, 1.0, 0.0]
    assert per.loc[1, "mean_aeration_real"] == pytest.approx(0.75) and np.isnan(per.loc[0, "mean_aeration_generated"])
    total = tab[tab.category == "all"].iloc[0]
    ref = stats.ks_2samp(real.aeration, gen.aeration)
    assert total["ks_statistic"] == pytest.approx(ref.statistic) and total["ks_p"] == pytest.approx(ref.pvalue)


def test_distribution_table_floor_rows_and_warning():
    rng = np.random.default_rng(0)
    held = torch.tensor(rng.normal(size=(40, 4)))
    feats = {"space_a": {"heldout": held, "train_matched": held + 0.01, "generated": held + 3.0}}
    tab = exp.distribution_table(feats)
    assert list(tab["comparison"]) == ["generated vs held-out", "train vs held-out (floor)"]
    gen, floor = tab.iloc[0], tab.iloc[1]
    assert gen["fid"] == pytest.approx(4 * 9.0, rel=1e-6)  # a pure mean shift of 3 in 4 dims: |mu|^2 = 36
    assert floor["fid"] == pytest.approx(4 * 1e-4, abs=1e-6) and gen["kid"] > floor["kid"] and gen["kid_std"] > 0
    assert (tab["n_real"] == 40).all() and all("< 2048" in w for w in tab["warning"])


def test_memorization_counts_uncalibrated_categories():
    rng = np.random.default_rng(1)
    train = _set([0] * 10 + [1] * 10)
    held = _set([0] * 6 + [1] * 5 + [2] * 3)  # category 2 has no training images
    gen = _set([0, 0, 1, 2, 2])  # generated cat 2: no calibration
    ft = torch.tensor(rng.normal(size=(20, 3)))
    feats = {"train": ft, "heldout": torch.tensor(rng.normal(size=(14, 3))),
             "generated": torch.cat([ft[:1], torch.tensor(rng.normal(size=(4, 3)))])}  # gen 0 copies train 0
    mem = exp.memorization(feats, train, held, gen, space="efficientnet_lite0")
    assert mem.excluded == {0: 0, 1: 0, 2: 2}
    assert mem.generated_index.tolist() == [0, 1, 2] and len(mem.heldout_index) == 11
    assert mem.audit.generated_distance[0] == pytest.approx(0.0) and mem.audit.flagged[0]
    table = exp.flag_table(mem)
    assert table["category"].tolist() == [0, 1, "all"]
    assert table.loc[table.category == "all", "excluded"].item() == 2
    paper_col = [c for c in table.columns if "paper" in c]
    assert len(paper_col) == 1 and "not comparable" in paper_col[0]
    assert table[paper_col[0]].tolist()[:2] == [exp.PAPER_NEAREST[0], exp.PAPER_NEAREST[1]]
    assert table.loc[table.category == 0, "flagged_fraction"].item() == pytest.approx(0.5)  # 1 of 2 in cat 0
    with pytest.raises(ValueError, match="no generated image"):
        exp.memorization(feats, train, held, _set([2, 2, 2, 2, 2]), space="x")


def test_memorization_space_follows_the_weights_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDGEN_RESNET18_WEIGHTS", raising=False)
    assert exp.memorization_space() == "efficientnet_lite0"
    monkeypatch.setenv("MEDGEN_RESNET18_WEIGHTS", str(tmp_path / "missing.pth"))
    assert exp.memorization_space() == "efficientnet_lite0"
    (tmp_path / "r18.pth").write_bytes(b"x")
    monkeypatch.setenv("MEDGEN_RESNET18_WEIGHTS", str(tmp_path / "r18.pth"))
    assert exp.memorization_space() == "resnet18"


def test_paper_numbers_are_the_papers():
    assert exp.PAPER_NEAREST == {0: 2.280, 1: 2.675, 2: 2.4774}
    assert exp.PAPER_TABLE1["diffusion_steps"] == 4000 and exp.PAPER_TABLE1["batch_size"] == 128


# --------------------------------------------------------------------------------------
# Findings, both ways
# --------------------------------------------------------------------------------------
def _recon_rows(dps: float, unguided: float, tik: float, n: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for op in ("us_linear", "us_acoustic"):
        for method, mu in ((exp.DPS, dps), (exp.UNGUIDED, unguided), (exp.TIKHONOV, tik)):
            for i, v in enumerate(mu + rng.normal(0, 0.2, n)):
                rows.append({"operator": op, "method": method, "patient_id": f"p{i}", "metric": "psnr", "value": v})
                rows.append({"operator": op, "method": method, "patient_id": f"p{i}", "metric": "residual",
                             "value": 0.1})
    return pd.DataFrame(rows)


def _flags(rate: float, n: int = 100) -> pd.DataFrame:
    return pd.DataFrame([{"category": 0, "flagged_fraction": rate, "n_generated": n // 2, "calibration_rate": 0.01,
                          "space": "efficientnet_lite0"},
                         {"category": 1, "flagged_fraction": rate, "n_generated": n // 2, "calibration_rate": 0.01,
                          "space": "efficientnet_lite0"},
                         {"category": "all", "flagged_fraction": rate, "n_generated": n, "calibration_rate": 0.01,
                          "space": "efficientnet_lite0"}])


def _dist(gen: float, floor: float) -> pd.DataFrame:
    return pd.DataFrame([{"space": s, "comparison": c, "fid": v, "kid": 0.0, "n_real": 10, "n_other": 10}
                         for s in exp.FID_SPACES for c, v in (("generated vs held-out", gen),
                                                              ("train vs held-out (floor)", floor))])


def _aer(shares_gen) -> pd.DataFrame:
    rows = [{"category": c, "share_real": r, "share_generated": g}
            for c, r, g in zip(exp.CATEGORIES, (0.4, 0.4, 0.2), shares_gen)]
    rows.append({"category": "all", "share_real": 1.0, "share_generated": 1.0, "ks_statistic": 0.1, "ks_p": 0.5})
    return pd.DataFrame(rows)


def test_findings_hold_on_good_frames():
    rows = _recon_rows(25.0, 15.0, 20.0)
    found = exp.findings(flags=_flags(0.01), aeration=_aer((0.3, 0.5, 0.2)), distribution=_dist(50.0, 5.0),
                         recon_rows=rows, tests=exp.paired_tests(rows))
    assert list(found) == list(exp.FINDINGS)
    assert all(h for h, _ in found.values()), found
    dps = rows[(rows.operator == "us_acoustic") & (rows.method == exp.DPS) & (rows.metric == "psnr")]["value"].mean()
    assert f"DPS {dps:.2f} dB" in found["dps_beats_tikhonov_us_acoustic"][1]


def test_findings_fail_on_bad_frames():
    rows = _recon_rows(18.0, 15.0, 20.0)  # DPS beats the unguided prior but not Tikhonov
    found = exp.findings(flags=_flags(0.2), aeration=_aer((0.0, 0.9, 0.1)), distribution=_dist(4.0, 5.0),
                         recon_rows=rows, tests=exp.paired_tests(rows))
    assert not any(h for h, _ in found.values()), found
    assert "binomial" in found["memorization_flag_rate_near_calibration"][1]


def test_findings_need_their_inputs_and_flag_rate_tolerance():
    found = exp.findings()
    assert all(not h and t.startswith("not evaluated") for h, t in found.values())
    # 3 of 100 flagged vs 1 % calibration: binomial P(K >= 3) = 0.079 >= 0.05 -> still near; 5 of 100 is not
    assert exp.findings(flags=_flags(0.03))["memorization_flag_rate_near_calibration"][0]
    assert not exp.findings(flags=_flags(0.05))["memorization_flag_rate_near_calibration"][0]


def test_paired_tests_and_headline_metrics():
    rows = _recon_rows(25.0, 15.0, 20.0)
    tests = exp.paired_tests(rows)
    assert set(tests["operator"]) == {"us_linear", "us_acoustic"} and set(tests["b"]) == {exp.UNGUIDED, exp.TIKHONOV}
    a = rows[(rows.operator == "us_linear") & (rows.metric == "psnr")]
    x = a[a.method == exp.DPS]["value"].to_numpy()
    y = a[a.method == exp.UNGUIDED]["value"].to_numpy()
    sel = tests[(tests.operator == "us_linear") & (tests.b == exp.UNGUIDED)].iloc[0]
    assert sel["t_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    head = exp.headline_metrics(distribution=_dist(50.0, 5.0), flags=_flags(0.02), aeration=_aer((0.3, 0.5, 0.2)),
                                recon_rows=rows)
    assert head["prior [inception]"]["fid"] == 50.0 and head["prior [inception]"]["fid_floor"] == 5.0
    assert head["memorization [efficientnet_lite0]"]["flag_rate_all"] == 0.02
    assert head["aeration"]["share_generated_cat1"] == 0.5
    assert head[f"{exp.DPS} [us_acoustic]"]["psnr"] == pytest.approx(round(
        rows[(rows.operator == "us_acoustic") & (rows.method == exp.DPS) & (rows.metric == "psnr")]["value"].mean(), 4))


# --------------------------------------------------------------------------------------
# End to end, tiny: 16 px, 2-step trainings, a few images
# --------------------------------------------------------------------------------------
def _tiny_configs():
    from medgen.config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig

    unet = UNetConfig(channels=(8, 16), attention_levels=(False, False), norm_groups=4, num_heads=2)
    common = dict(diffusion=DiffusionConfig(timesteps=50), sample=SampleConfig(sampler="ddpm", steps=2),
                  train=TrainConfig(steps=2, batch_size=4, log_every=1, num_threads=1))
    data = DataConfig(dataset="paired", phantom="lung", source="ct", target="", image_size=16, n_train=12, n_test=8)
    prior = RunConfig(name="lung_us/prior", method="ddpm", data=data, model=unet, **common)
    sup = RunConfig(name="lung_us/conditional_us_linear", method="cddpm",
                    data=replace(data, source="us_linear", target="ct", source_resize=True),
                    model=replace(unet, cond_image_channels=1), **common)
    return prior, sup


def test_end_to_end_tiny(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen.metrics.memorization import plot_closest_pairs, plot_distance_histograms

    torch.set_num_threads(1)
    prior_cfg, sup_cfg = _tiny_configs()
    p = exp.Plan(preset="ci", seed=0, image_size=16, n_train=12, n_heldout=8, n_generate=6,
                 operators=("us_linear", "inpaint"), n_recon=3, n_samples=2, dps_steps=2, guidance_scales=(0.5, 1.0),
                 steps=(1, 2), sweep_operators=("us_linear",), n_sweep=3, memorization_space="efficientnet_lite0",
                 fid_spaces=("efficientnet_lite0",))
    prior = zoo.resolve(prior_cfg, root=tmp_path, progress=False)
    sup = zoo.resolve(sup_cfg, root=tmp_path, progress=False)
    assert (tmp_path / "runs").is_dir()
    train, held = exp.real_sections(prior_cfg, "train"), exp.real_sections(prior_cfg, "test")
    assert train.images.shape == (12, 1, 16, 16) and len(held) == 8 and not set(train.patient_ids) & set(held.patient_ids)
    assert set(train.category) <= {0, 1, 2} and np.allclose(lung.aeration_category(train.aeration), train.category)

    gen = exp.run_generation(p, prior, train, held)
    assert len(gen.generated) == 6 and gen.generated.images.abs().max() <= 1
    assert set(gen.distribution["comparison"]) == {"generated vs held-out", "train vs held-out (floor)"}
    assert gen.flags["category"].iloc[-1] == "all"
    assert int(gen.flags["n_generated"].iloc[-1]) + sum(gen.memorization.excluded.values()) == 6
    kept = gen.audited
    assert len(kept) == len(gen.memorization.generated_index)
    plt.close(plot_distance_histograms(gen.memorization.audit))
    plt.close(plot_closest_pairs(gen.memorization.audit, train.images, kept.images))
    plt.close(exp.plot_aeration(train, gen.generated))

    recon = exp.run_reconstruction(p, prior, {"us_linear": sup}, held)
    assert set(recon.samples["us_linear"]) == {exp.DPS, exp.UNGUIDED, exp.TIKHONOV, exp.SUPERVISED}
    assert exp.SUPERVISED not in recon.samples["inpaint"]  # trained on ultrasound measurements only
    assert recon.samples["us_linear"][exp.DPS].shape == (2, 3, 1, 16, 16)
    rows = recon.rows
    assert list(dict.fromkeys(rows["metric"])) == list(exp.RECON_METRICS) and rows["patient_id"].nunique() == 3
    assert (rows["data_range"] == exp.DATA_RANGE).all() and {"operator", "method", "value"} <= set(rows.columns)
    # the rows are medgen.score's, and agree with inverse.reconstruction_metrics (its other callers' path)
    from medgen.inverse import reconstruction_metrics
    m = recon.measurements["us_linear"]
    ref = reconstruction_metrics(recon.samples["us_linear"][exp.DPS].mean(0), recon.truth, m["y"], m["op"],
                                 lung_mask=recon.heldout.lung_mask)
    dps = rows[(rows.operator == "us_linear") & (rows.method == exp.DPS)]
    for metric in exp.RECON_METRICS:
        np.testing.assert_array_equal(dps[dps.metric == metric]["value"].to_numpy(), ref[metric].to_numpy(float))
    table = exp.reconstruction_table(rows, "us_linear")
    assert len(table.cells()) == 4
    sweeps = exp.run_sweeps(p, prior, recon)
    assert set(zip(sweeps["sweep"], sweeps["guidance_scale"], sweeps["steps"])) == {
        ("guidance_scale", 0.5, 2), ("guidance_scale", 1.0, 2), ("steps", 1.0, 1), ("steps", 1.0, 2)}
    plt.close(exp.plot_sweeps(sweeps))
    summary = exp.sweeps_summary(sweeps)
    assert list(summary.columns) == ["psnr", "residual"] and len(summary) == 4
    assert summary.loc[("us_linear", "steps", 1.0, 2), "psnr"] == pytest.approx(sweeps[
        (sweeps.sweep == "steps") & (sweeps.steps == 2) & (sweeps.metric == "psnr")]["value"].mean())
    plt.close(exp.figure_grid(recon, "us_linear"))
    tests = exp.paired_tests(rows)
    assert list(exp.tests_summary(tests).columns)[:2] == ["family", "comparison"]
    assert "no supervised model" in exp.operator_heading("inpaint", {"us_linear": sup})
    assert exp.operator_heading("us_linear", {"us_linear": sup}) == "**us_linear**"
    found = exp.findings(flags=gen.flags, aeration=gen.aeration, distribution=gen.distribution, recon_rows=rows,
                         tests=tests)
    assert list(found) == list(exp.FINDINGS) and all(isinstance(t, str) and t for _, t in found.values())
    head = exp.headline_metrics(distribution=gen.distribution, flags=gen.flags, aeration=gen.aeration,
                                recon_rows=rows)
    assert "prior [efficientnet_lite0]" in head and f"{exp.DPS} [inpaint]" in head


def test_config_table_and_space_note():
    from medgen.config import RunConfig

    cfg = RunConfig()
    tab = exp.config_table(cfg).set_index("parameter")
    assert tab.loc["diffusion_steps", "paper"] == "4000" and tab.loc["diffusion_steps", "ours"] == str(cfg.diffusion.timesteps)
    assert tab.loc["batch_size", "ours"] == str(cfg.train.batch_size) and tab.loc["image_size", "paper"] == "256"
    note = exp.space_note("efficientnet_lite0")
    assert "efficientnet_lite0" in note and "not comparable" in note and "MEDGEN_RESNET18_WEIGHTS" in note


def test_plan_per_preset():
    from medgen.config import get_preset
    from medgen.presets.lung_us import N_GENERATE

    ci = exp.plan("ci")
    data = get_preset("ci", exp.TASK_PRIOR).data
    assert (ci.image_size, ci.n_train, ci.n_heldout) == (data.image_size, data.n_train, data.n_test)
    assert ci.n_generate == N_GENERATE["ci"] and ci.operators == exp.OPERATORS and ci.one_thread
    assert len(ci.guidance_scales) <= 2 and len(ci.steps) <= 2 and ci.n_recon <= ci.n_heldout
    smoke = exp.plan("smoke", n_generate=10, operators=["us_linear"], guidance_scales=[1, 2], steps=[5])
    assert smoke.n_generate == 10 and smoke.operators == ("us_linear",) and smoke.sweep_operators == ("us_linear",)
    assert smoke.guidance_scales == (1.0, 2.0) and smoke.steps == (5,)
    cpu = exp.plan("cpu")
    assert cpu.image_size == get_preset("cpu", exp.TASK_PRIOR).data.image_size and not cpu.one_thread
    assert cpu.n_recon > ci.n_recon and len(cpu.steps) > len(ci.steps) and cpu.sweep_operators == exp.OPERATORS
    assert exp.prior_config(ci).train.num_threads == 1 and exp.prior_config(cpu) == replace(
        get_preset("cpu", exp.TASK_PRIOR), seed=0)
    assert exp.supervised_config(cpu, "us_acoustic").data.source == "us_acoustic"
    with pytest.raises(ValueError, match="operator"):
        exp.plan("ci", operators=["xray"])
    with pytest.raises(ValueError, match="n_generate"):
        exp.plan("ci", n_generate=1)
    with pytest.raises(ValueError, match="supervised"):
        exp.supervised_config(ci, "blur")


def test_real_sections_use_the_same_aeration_readout_as_generated_images():
    """Real and generated sections are compared through one readout (aeration from the image); the
    phantom's labels stay beside it, and the readout agrees with them."""
    from medgen.config import get_preset
    from medgen.data.phantoms import lung as lung_phantom

    cfg = get_preset("ci", task=exp.TASK_PRIOR)
    real = exp.real_sections(cfg, "test", 8)
    np.testing.assert_allclose(real.aeration, exp.aeration_of(real.images))
    assert np.array_equal(real.category, lung_phantom.aeration_category(real.aeration))
    assert real.aeration_label is not None and real.aeration_label.shape == (8,)
    assert np.abs(real.aeration - real.aeration_label).mean() < 0.05
    sub = real.subset([2, 0])
    assert np.array_equal(sub.aeration_label, real.aeration_label[[2, 0]])
