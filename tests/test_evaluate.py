"""evaluate(): tidy rows matching the metrics; summarize() and paired_test() against pandas/scipy."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wilcoxon

from medgen.config import DataConfig, RunConfig
from medgen.data.batch import collate
from medgen.data.toy import ToyShapes
from medgen.evaluate import evaluate, paired_test, summarize
from medgen.methods.baselines import GaussianFilter, Identity
from medgen.metrics.image import psnr, ssim

CFG = RunConfig()
DS = ToyShapes(DataConfig(image_size=16, n_train=4, n_test=10), "test")


class NoisyTranslator(torch.nn.Module):
    """Adds generator noise; records its training flag when called."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))
        self.seen_training = []

    def translate(self, source, *, generator=None, callback=None, **options):
        self.seen_training.append(self.training)
        noise = torch.randn(source.shape, generator=generator)
        return (source + self.scale.detach() * noise).clamp(-1, 1)


class Repeated(torch.utils.data.Dataset):
    """Two samples per patient: items of DS with patient ids shared in pairs."""

    def __len__(self):
        return len(DS)

    def __getitem__(self, i):
        return {**DS[i], "patient_id": f"pair-{i // 2}"}


def test_rows_columns_and_values_match_the_metrics():
    df = evaluate(Identity(CFG), DS, ("psnr", "ssim"), batch_size=3)
    assert list(df.columns) == ["sample", "patient_id", "metric", "value", "data_range", "method"]
    assert len(df) == 2 * len(DS) and set(df["method"]) == {"identity"} and set(df["data_range"]) == {2.0}
    assert sorted(df["sample"].unique()) == list(range(len(DS)))
    batch = collate([DS[i] for i in range(len(DS))])
    ref = {"psnr": psnr(batch.source, batch.target, data_range=2.0),
           "ssim": ssim(batch.source, batch.target, data_range=2.0)}
    for metric, values in ref.items():
        sel = df[df["metric"] == metric].sort_values("sample")
        assert np.allclose(sel["value"].to_numpy(), values.numpy())
        assert list(sel["patient_id"]) == DS.patient_ids


def test_options_reach_translate_and_data_range_is_recorded():
    a = evaluate(GaussianFilter(CFG), DS, ["mae"], sigma=0.0, data_range=4.0)
    b = evaluate(Identity(CFG), DS, ["mae"], data_range=4.0)
    assert np.allclose(a["value"], b["value"]) and set(a["data_range"]) == {4.0}
    c = evaluate(GaussianFilter(CFG), DS, ["mae"], sigma=2.0)
    assert not np.allclose(c["value"], b["value"])


def test_shared_generator_makes_runs_reproducible_and_eval_mode_is_restored():
    model = NoisyTranslator().train()
    one = evaluate(model, DS, ["psnr"], generator=torch.Generator().manual_seed(0), batch_size=4)
    two = evaluate(model, DS, ["psnr"], generator=torch.Generator().manual_seed(0), batch_size=4)
    three = evaluate(model, DS, ["psnr"], generator=torch.Generator().manual_seed(1), batch_size=4)
    assert one.equals(two) and not one["value"].equals(three["value"])
    assert "method" not in one.columns  # no .config
    assert model.training and not any(model.seen_training)


def test_errors_are_one_line():
    with pytest.raises(KeyError, match="unknown metric 'psnrr'"):
        evaluate(Identity(CFG), DS, ["psnrr"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(Identity(CFG), DS, batch_size=0)
    with pytest.raises(ValueError, match="unknown option 'stepz'"):
        evaluate(Identity(CFG), DS, stepz=3)

    class Wrong:
        def translate(self, source, **kw):
            return source[:, :, :8]

    with pytest.raises(ValueError, match="predictions are .* but targets are"):
        evaluate(Wrong(), DS)


def test_summarize_takes_subject_means_first():
    df = evaluate(Identity(CFG), Repeated(), ["psnr"])
    out = summarize(df)
    assert list(out.columns) == ["method", "metric", "mean", "sd", "n", "data_range"]
    per_subject = df.groupby("patient_id")["value"].mean()
    row = out.iloc[0]
    assert row["n"] == 5 == len(per_subject)
    assert row["mean"] == pytest.approx(per_subject.mean()) and row["sd"] == pytest.approx(per_subject.std(ddof=1))


def test_summarize_groups_by_method_and_metric():
    df = pd.concat([evaluate(Identity(CFG), DS), evaluate(GaussianFilter(CFG), DS)], ignore_index=True)
    out = summarize(df)
    assert len(out) == 4 and set(out["method"]) == {"identity", "gaussian_filter"} and (out["n"] == 10).all()
    ps = out.set_index(["method", "metric"])["mean"]
    assert ps["gaussian_filter", "psnr"] > ps["identity", "psnr"]  # smoothing helps on the toy task


def test_paired_test_matches_scipy_wilcoxon():
    df = pd.concat([evaluate(Identity(CFG), DS, ["psnr"]), evaluate(GaussianFilter(CFG), DS, ["psnr"])],
                   ignore_index=True)
    res = paired_test(df, "gaussian_filter", "identity", "psnr")
    a = df[df["method"] == "gaussian_filter"].groupby("patient_id")["value"].mean()
    b = df[df["method"] == "identity"].groupby("patient_id")["value"].mean()
    ref = wilcoxon(a.to_numpy(), b.loc[a.index].to_numpy())
    assert res["n"] == 10 and res["pvalue"] == pytest.approx(ref.pvalue) and res["statistic"] == ref.statistic
    assert res["mean_diff"] == pytest.approx((a - b).mean()) and res["mean_diff"] > 0


def test_paired_test_errors():
    df = evaluate(Identity(CFG), DS, ["psnr"])
    with pytest.raises(ValueError, match="no rows for method='cddpm'"):
        paired_test(df, "identity", "cddpm", "psnr")
    other = df.assign(method="other", patient_id=df["patient_id"] + "x")
    with pytest.raises(ValueError, match="different subjects"):
        paired_test(pd.concat([df, other]), "identity", "other", "psnr")
    with pytest.raises(ValueError, match="no column 'label'"):
        paired_test(df, "a", "b", "psnr", by="label")


class Masked(torch.utils.data.Dataset):
    """Items of DS with a left-half mask."""

    def __len__(self):
        return len(DS)

    def __getitem__(self, i):
        item = DS[i]
        mask = torch.zeros_like(item["target"][:1])
        mask[..., : mask.shape[-1] // 2] = 1
        return {**item, "mask": mask}


@pytest.mark.parametrize("mode", ["mean", "zero", "ignore"])
def test_mask_modes_match_metrics_on_hand_masked_images(mode):
    df = evaluate(GaussianFilter(CFG), Masked(), ["psnr"], sigma=1.0, mask_mode=mode, fill=-1.0)
    batch = collate([Masked()[i] for i in range(len(DS))])
    pred = GaussianFilter(CFG).translate(batch.source, sigma=1.0)
    keep = batch.mask.bool()
    expected = {"mean": psnr(pred, batch.target, data_range=2.0, mask=batch.mask),
                "zero": psnr(pred.where(keep, -1.0), batch.target.where(keep, -1.0), data_range=2.0),
                "ignore": psnr(pred, batch.target, data_range=2.0)}[mode]
    assert np.allclose(df.sort_values("sample")["value"].to_numpy(), expected.numpy())


def test_zero_mode_differs_from_masked_mean_and_unknown_mode_is_refused():
    zero = evaluate(GaussianFilter(CFG), Masked(), ["psnr"], sigma=1.0, mask_mode="zero")
    mean = evaluate(GaussianFilter(CFG), Masked(), ["psnr"], sigma=1.0, mask_mode="mean")
    assert (zero["value"].to_numpy() > mean["value"].to_numpy()).all()   # constant pixels inflate PSNR
    with pytest.raises(ValueError, match="mask_mode"):
        evaluate(Identity(CFG), Masked(), ["psnr"], mask_mode="zeros")
