"""predict() and score(): the two halves of evaluate(), each usable on its own."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from medgen.config import DataConfig, RunConfig
from medgen.data.toy import ToyShapes
from medgen.evaluate import evaluate
from medgen.methods.baselines import Identity
from medgen.metrics.image import psnr
from medgen.predict import Predictions, predict, stack
from medgen.score import score

DS = ToyShapes(DataConfig(image_size=16, n_train=4, n_test=10), "test")
ITEMS = [DS[i] for i in range(len(DS))]


class Noisy(torch.nn.Module):
    """Adds generator noise; remembers the batch sizes and training flags it saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.calls = []

    def translate(self, source, *, generator=None, scale=0.1, **_):
        self.calls.append((source.shape[0], self.training))
        return source + scale * torch.randn(source.shape, generator=generator)


def test_predict_keeps_order_ids_and_one_generator_across_batches():
    model = Noisy()
    a = predict(model, DS, batch_size=3, seed=7)
    assert isinstance(a, Predictions) and len(a) == len(DS)
    assert a.index == list(range(len(DS))) and a.patient_ids == [str(it["patient_id"]) for it in ITEMS]
    assert [n for n, _ in model.calls] == [3, 3, 3, 1] and not any(t for _, t in model.calls)
    assert model.training  # restored
    gen = torch.Generator().manual_seed(7)  # the same draws as one shared generator over the batches
    src = stack(ITEMS, "source")
    want = torch.cat([src[s:s + 3] + 0.1 * torch.randn(src[s:s + 3].shape, generator=gen) for s in range(0, 10, 3)])
    assert torch.equal(a.outputs, want)
    assert predict(model, DS, batch_size=3, seed=7, scale=0.0).options == {"scale": 0.0}


def test_predict_slicewise_runs_a_2d_model_on_every_slice():
    vol = torch.linspace(-1, 1, 2 * 1 * 5 * 4 * 4).reshape(2, 1, 5, 4, 4)
    items = [{"source": v, "patient_id": f"v{i}"} for i, v in enumerate(vol)]
    seen = []

    class Flip:
        def translate(self, source, *, generator=None, **_):
            seen.append(tuple(source.shape))
            return -source

    out = predict(Flip(), items, batch_size=2, slicewise=True)
    assert torch.equal(out.outputs, -vol) and out.patient_ids == ["v0", "v1"]
    assert seen == [(2, 1, 4, 4), (2, 1, 4, 4), (1, 1, 4, 4)] * 2
    with pytest.raises(ValueError, match="slicewise needs volumes"):
        predict(Flip(), ITEMS, slicewise=True)
    with pytest.raises(ValueError, match="empty"):
        predict(Flip(), [])


def test_score_matches_the_metric_and_skimage():
    pred = predict(Noisy(), DS, seed=0)
    target = stack(ITEMS, "target")
    rows = score(pred, target, ["psnr", "ssim"], data_range=2.0)
    assert list(rows.columns[:5]) == ["sample", "patient_id", "metric", "value", "data_range"]
    got = rows[rows.metric == "psnr"]["value"].to_numpy()
    np.testing.assert_allclose(got, psnr(pred.outputs, target, data_range=2.0).numpy(), rtol=1e-12)
    ref = [peak_signal_noise_ratio(t.numpy().astype(np.float64), p.numpy().astype(np.float64), data_range=2.0)
           for p, t in zip(pred.outputs, target)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    chunked = score(pred, target, ["psnr", "ssim"], data_range=2.0, batch_size=4)  # rows chunk by chunk
    key = ["metric", "sample"]
    np.testing.assert_allclose(chunked.sort_values(key)["value"], rows.sort_values(key)["value"], rtol=1e-12)


def test_score_zero_mask_mode_equals_hand_masking_and_closures_get_the_set():
    target = stack(ITEMS, "target")
    pred = target + 0.2
    mask = torch.zeros(len(ITEMS), 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    zero = score(pred, target, ["psnr"], data_range=2.0, mask=mask, mask_mode="zero", fill=0.0)
    hand = psnr(pred * mask, target * mask, data_range=2.0)
    np.testing.assert_allclose(zero["value"], hand.numpy(), rtol=1e-12)
    sizes = []

    def bias(p, t, *, data_range, mask=None):
        sizes.append(p.shape[0])
        return (p - t).flatten(1).mean(1)

    rows = score(pred, target, [bias], data_range=2.0, patient_ids=[f"p{i}" for i in range(10)])
    assert sizes == [10] and rows["metric"].unique().tolist() == ["bias"]
    np.testing.assert_allclose(rows["value"], 0.2, atol=1e-6)
    assert rows["patient_id"].tolist() == [f"p{i}" for i in range(10)]


def test_score_errors_are_one_line():
    target = stack(ITEMS, "target")
    with pytest.raises(ValueError, match=r"predictions are \(10, 1, 8, 8\) but targets are"):
        score(target[..., :8, :8], target, ["psnr"])
    with pytest.raises(ValueError, match="unknown mask_mode 'zeros'"):
        score(target, target, ["psnr"], mask_mode="zeros")
    with pytest.raises(KeyError, match="unknown metric 'psnrr'"):
        score(target, target, ["psnrr"])
    with pytest.raises(ValueError, match="10 predictions but 2 patient ids"):
        score(target, target, ["psnr"], patient_ids=["a", "b"])


def test_evaluate_is_score_of_predict():
    model = Identity(RunConfig())
    rows = evaluate(model, DS, ["psnr", "mae"], batch_size=4)
    again = score(predict(model, DS, batch_size=4), stack(ITEMS, "target"), ["psnr", "mae"], batch_size=4)
    assert rows.equals(again)
