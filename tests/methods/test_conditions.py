"""Per-sample conditions (issue 13.1): Method.condition_keys / check_conditions, a conditional cddpm
(scalar labels through the UNet's vector condition, dropped for CFG), predict passing the items' labels,
``medgen sample --cond`` and multi-channel ``--input`` stacks, and the demo helpers."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import ConfigError, apply_overrides, get_preset
from medgen.data.batch import collate
from medgen.diffusion.guidance import drop_condition
from medgen.methods.base import check_conditions, conditions_from_meta
from medgen.methods.cddpm import ConditionalDDPM, embed_scalars
from medgen.predict import predict
from medgen.registry import DATASETS, METHODS
from assertions import assert_one_line_error, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# The knee phantom's volume_slices items carry `depth` (the slice's d in [0, 1]) and `kl_grade` labels.
KNEE = {"data.dataset": "volume_slices", "data.phantom": "knee", "data.source": "xray", "data.target": "mri",
        "data.image_size": 16, "data.depth": 4, "data.n_train": 1, "data.n_test": 1,
        "model.cond_vector_dim": 8, "diffusion.conditions": ["depth", "kl_grade"],
        "train.steps": 2, "train.batch_size": 2, "train.ema_decay": 0.0}
CFG = apply_overrides(get_preset("ci"), KNEE)


def _model(cfg=CFG, seed=0) -> ConditionalDDPM:
    """A conditional cddpm whose zero-initialised output conv is perturbed (so outputs depend on the input)."""
    torch.manual_seed(seed)
    model = ConditionalDDPM(cfg).eval()
    with torch.no_grad():
        for p in model.net.conv_out.parameters():
            p.normal_(0, 0.05)
    return model


def _items(split="test"):
    ds = DATASETS[CFG.data.dataset](CFG.data, split)
    return [ds[i] for i in range(len(ds))]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# The shared validator
# --------------------------------------------------------------------------------------
def test_check_conditions_accepts_tensors_sequences_and_one_number():
    out = check_conditions(("a", "b"), {"b": [1, 2], "a": torch.tensor([0.5, 1.5])}, 2, method="m")
    assert list(out) == ["a", "b"] and all(v.dtype == torch.float32 and v.shape == (2,) for v in out.values())
    assert check_conditions(("a",), {"a": 3.0}, 4)["a"].tolist() == [3.0] * 4
    assert check_conditions((), None, 3) == {} and check_conditions((), {}, 3) == {}


@pytest.mark.parametrize("keys, cond, message", [
    (("uca",), None, r"^missing condition 'uca' for method 'm' \(its conditions: uca\)"),
    (("uca", "cobb"), {"uca": 1.0}, r"^missing condition 'cobb' for method 'm' \(its conditions: uca, cobb\)"),
    (("uca",), {"uca": 1.0, "cob": 2.0}, r"^unknown condition 'cob' for method 'm' \(its conditions: uca\)$"),
    ((), {"uca": 1.0}, r"^unknown condition 'uca' for method 'm' \(it takes no conditions\)$"),
    (("uca",), {"uca": [1.0, 2.0, 3.0]}, r"condition 'uca' of method 'm' has shape \(3,\); expected \[B\] = \[2\]"),
    (("uca",), {"uca": [1.0, float("nan")]}, r"condition 'uca' of method 'm' has non-finite values"),
    (("uca",), {"uca": "steep"}, r"condition 'uca' of method 'm' is not numeric"),
    (("uca",), [1.0, 2.0], r"cond of method 'm' must map condition names"),
])
def test_check_conditions_errors_are_one_line_and_name_the_key(keys, cond, message):
    with pytest.raises(ValueError, match=message) as err:
        check_conditions(keys, cond, 2, method="m")
    assert "\n" not in str(err.value)


def test_conditions_from_meta_names_the_item_without_the_label():
    meta = {"patient_id": ["p0", "p1"], "depth": [0.0, None]}
    with pytest.raises(ValueError, match=r"^item p1: label 'depth' \(a condition of method 'm'\) is None"):
        conditions_from_meta(("depth",), meta, 2, method="m")
    with pytest.raises(ValueError, match=r"^item p0 has no label 'kl_grade', a condition of method 'm'"):
        conditions_from_meta(("kl_grade",), meta, 2, method="m")
    assert conditions_from_meta(("depth",), {"depth": [True, 2]}, 2)["depth"].tolist() == [1.0, 2.0]


def test_methods_without_conditions_are_unchanged():
    cfg = get_preset("ci")
    src = torch.rand(2, 1, 16, 16) * 2 - 1
    for name in ("identity", "cddpm"):
        model = METHODS[name](cfg).eval()
        assert model.condition_keys == ()
        ref = model.translate(src, generator=_gen(), steps=2)
        for cond in (None, {}):
            torch.testing.assert_close(model.translate(src, generator=_gen(), steps=2, cond=cond), ref, rtol=0, atol=0)
        torch.testing.assert_close(model.outputs_for(src, generator=_gen(), cond=None), model.outputs_for(src, generator=_gen()))
        with pytest.raises(ValueError, match=f"unknown condition 'uca' for method '{name}' \\(it takes no conditions\\)"):
            model.translate(src, cond={"uca": 30.0})
    assert all(k.startswith("denoiser.net.") for k in METHODS["cddpm"](cfg).state_dict())


# --------------------------------------------------------------------------------------
# The conditional cddpm
# --------------------------------------------------------------------------------------
def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"need model.cond_vector_dim > 0 and a multiple of 2 x 2"):
        ConditionalDDPM(apply_overrides(CFG, {"model.cond_vector_dim": 6}))
    with pytest.raises(ConfigError, match=r"cond_vector_dim=8 needs diffusion.conditions"):
        ConditionalDDPM(apply_overrides(CFG, {"diffusion.conditions": []}))
    with pytest.raises(ConfigError, match="distinct"):
        ConditionalDDPM(apply_overrides(CFG, {"diffusion.conditions": ["depth", "depth"]}))


def test_embed_scalars_features_tell_values_apart():
    feats = embed_scalars({"a": torch.tensor([0.0, 0.01, 1.0, 60.0]), "b": torch.tensor([0.0, 0.0, 2.0, 4.0])},
                          ("a", "b"), 8)
    assert feats.shape == (4, 8) and torch.isfinite(feats).all()
    assert torch.cdist(feats[:, :4], feats[:, :4]).triu(1)[torch.ones(4, 4).triu(1).bool()].min() > 0.01
    assert feats.norm(dim=1).min() > 1.0  # never the all-zero null vector


def test_translate_requires_the_conditions_and_they_change_the_output():
    model = _model()
    src = torch.rand(2, 1, 16, 16) * 2 - 1
    cond = {"depth": torch.tensor([0.0, 1.0]), "kl_grade": torch.tensor([0.0, 4.0])}
    out = model.translate(src, cond=cond, generator=_gen(), steps=2)
    assert out.shape == (2, 1, 16, 16)
    other = model.translate(src, cond={**cond, "depth": torch.tensor([0.5, 0.5])}, generator=_gen(), steps=2)
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match=r"^missing condition 'depth' for method 'cddpm' \(its conditions: depth, kl_grade\)"):
        model.translate(src, generator=_gen(), steps=2)
    with pytest.raises(ValueError, match=r"^missing condition 'kl_grade'"):
        model.translate(src, cond={"depth": 0.5}, steps=2)
    with pytest.raises(ValueError, match=r"^unknown condition 'uca' for method 'cddpm' \(its conditions: depth, kl_grade\)"):
        model.translate(src, cond={**cond, "uca": 1.0}, steps=2)


def test_classifier_free_guidance_drops_the_scalar_conditions():
    model = _model()
    src = torch.rand(2, 1, 16, 16) * 2 - 1
    c = model.condition(src, {"depth": [0.2, 0.9], "kl_grade": [1, 3]})
    null = model._null(c)
    assert (null.image == CFG.diffusion.null_value).all() and torch.equal(null.vector, torch.zeros_like(c.vector))
    dropped = drop_condition(c, 1.0, model._null, _gen())
    assert torch.equal(dropped.vector, torch.zeros_like(c.vector))
    # training with p = 1 never sees the labels: the loss is the same whatever they are
    items = _items("train")[:2]
    relabel = [{**it, "depth": 0.5, "kl_grade": 0} for it in items]
    always = dataclasses.replace(CFG, diffusion=dataclasses.replace(CFG.diffusion, cond_drop_prob=1.0))
    m1 = _model(always)
    loss = lambda m, its: m.training_step(collate(its), "model", generator=_gen(3))["loss"]  # noqa: E731
    assert torch.equal(loss(m1, items), loss(m1, relabel))
    assert not torch.equal(loss(model, items), loss(model, relabel))
    # CFG with w = -1 samples the null branch only: the output no longer depends on the conditions
    a = model.translate(src, cond={"depth": [0.0, 0.0], "kl_grade": [0, 0]}, generator=_gen(), steps=2, guidance_scale=-1.0)
    b = model.translate(src, cond={"depth": [1.0, 1.0], "kl_grade": [4, 4]}, generator=_gen(), steps=2, guidance_scale=-1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_training_steps_then_predict_passes_each_items_labels(tmp_path: Path):
    from medgen.train import train_or_load

    model = train_or_load(CFG, root=tmp_path / "runs", progress=False)
    assert model.condition_keys == ("depth", "kl_grade")
    items = _items("test")  # 1 knee, 4 slices: depth 0, 1/3, 2/3, 1
    seen = []
    translate = model.translate

    def spy(source, **kwargs):
        seen.append({k: v.clone() for k, v in kwargs["cond"].items()})
        return translate(source, **kwargs)

    model.translate = spy
    preds = predict(model, items, batch_size=3, seed=0, steps=2)
    assert preds.outputs.shape == (4, 1, 16, 16) and torch.isfinite(preds.outputs).all()
    depths = torch.cat([c["depth"] for c in seen])
    torch.testing.assert_close(depths, torch.tensor([it["depth"] for it in items], dtype=torch.float32))
    assert torch.cat([c["kl_grade"] for c in seen]).tolist() == [float(it["kl_grade"]) for it in items]
    del model.translate
    # the same as translating by hand with the labels
    batch = collate(items[:3])
    manual = model.translate(batch.source, cond={"depth": batch.meta["depth"], "kl_grade": batch.meta["kl_grade"]},
                             generator=_gen(0), steps=2)
    torch.testing.assert_close(preds.outputs[:3], manual)
    # an item without the label: one line naming the key and the item
    broken = [dict(it) for it in items]
    del broken[2]["kl_grade"]
    with pytest.raises(ValueError, match=r"^predict: dataset item 2 \(knee-500000\) has no label 'kl_grade', "
                                         r"a condition of method 'cddpm' \(its conditions: depth, kl_grade\)$"):
        predict(model, broken, batch_size=3, steps=2)


# --------------------------------------------------------------------------------------
# medgen sample --cond, --input stacks
# --------------------------------------------------------------------------------------
run = run_cli  # the shared CLI runner (tests/assertions.py)


# The spine phantom's multi_depth items: the five ultrasound depths as channels, and its `uca` label.
SPINE = ["data.dataset=multi_depth", "data.phantom=spine_coronal", "data.source=us_vpi", "data.target=xray",
         "data.image_size=16", "data.n_train=2", "data.n_test=1", "model.cond_image_channels=5",
         "model.cond_vector_dim=8", 'diffusion.conditions=["uca"]', "train.steps=2", "train.batch_size=2"]


@pytest.mark.slow
def test_sample_cli_takes_conditions_and_a_stack_of_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDGEN_RUNS", str(tmp_path / "runs"))
    sets = [a for s in SPINE for a in ("--set", s)]
    code, out, err = run(capsys, "train", "--preset", "ci", "--runs", str(tmp_path / "runs"), *sets)
    assert code == 0, err
    ckpt = out.strip().splitlines()[-1]
    rng = np.random.default_rng(0)
    pngs = []
    for k in range(5):
        pngs.append(tmp_path / f"depth{k}.png")
        Image.fromarray(rng.integers(0, 255, (32, 16), dtype=np.uint8)).save(pngs[-1])
    inputs = [a for p in pngs for a in ("--input", str(p))]
    common = ("sample", "--checkpoint", ckpt, "--steps", "2")

    code, out, err = run(capsys, *common, *inputs, "--cond", "uca=32.5", "--output", str(tmp_path / "o.npy"))
    assert code == 0, err
    result = np.load(tmp_path / "o.npy")
    assert result.shape == (32, 16) and 0 <= result.min() <= result.max() <= 1

    stack = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in pngs])
    np.save(tmp_path / "stack.npy", stack)  # the same five images as one [5, H, W] array: the same result
    code, _, err = run(capsys, *common, "--input", str(tmp_path / "stack.npy"), "--cond", "uca=32.5",
                       "--output", str(tmp_path / "o2.npy"))
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "o2.npy"), result, atol=1e-6)
    code, _, err = run(capsys, *common, *inputs, "--cond", "uca=10", "--output", str(tmp_path / "o3.npy"))
    assert code == 0 and not np.allclose(np.load(tmp_path / "o3.npy"), result)

    code, _, err = run(capsys, *common, *inputs, "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "missing condition 'uca' for method 'cddpm' (its conditions: uca)")
    code, _, err = run(capsys, *common, *inputs, "--cond", "uca=1", "--cond", "cobb=2", "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "unknown condition 'cobb' for method 'cddpm' (its conditions: uca)")
    code, _, err = run(capsys, *common, *inputs, "--cond", "uca", "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "--cond must look like NAME=NUMBER, got 'uca'")
    code, _, err = run(capsys, *common, *inputs[:4], "--cond", "uca=1", "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "got 2 source image(s) (depth0.png, depth1.png)", "has 5 channels")
    np.save(tmp_path / "three.npy", stack[:3])
    code, _, err = run(capsys, *common, "--input", str(tmp_path / "three.npy"), "--cond", "uca=1",
                       "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "three.npy holds a stack of 3 images", "has 5 channels")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "small.png")
    code, _, err = run(capsys, *common, *inputs[:8], "--input", str(tmp_path / "small.png"), "--cond", "uca=1",
                       "--output", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "small.png is 16x16 but depth0.png is 32x16")


def test_read_sample_stack_counts_against_the_channels(tmp_path: Path):
    from medgen.data.io import ImageReadError, read_sample_stack

    arr = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    np.save(tmp_path / "two.npy", arr)
    for k in range(2):
        Image.fromarray((arr[k] * 255).round().astype(np.uint8)).save(tmp_path / f"{k}.png")
    np.testing.assert_array_equal(read_sample_stack(tmp_path / "two.npy", 2, notes=[]), arr)
    got = read_sample_stack([tmp_path / "0.png", tmp_path / "1.png"], 2, notes=[])
    assert got.shape == (2, 8, 8) and np.abs(got - arr).max() <= 0.5 / 255 + 1e-6
    assert read_sample_stack(tmp_path / "0.png", 1, notes=[]).shape == (1, 8, 8)
    with pytest.raises(ImageReadError, match=r"^got 1 source image\(s\) \(0.png\) but the model's source has 2 channels"):
        read_sample_stack([tmp_path / "0.png"], 2, notes=[])
    with pytest.raises(ImageReadError, match=r"^two.npy holds a stack of 2 images \[2, 8, 8\] but the model's source has 5"):
        read_sample_stack(tmp_path / "two.npy", 5, notes=[])


# --------------------------------------------------------------------------------------
# Demo helpers (demos/ui.py)
# --------------------------------------------------------------------------------------
def test_demo_condition_inputs_and_values():
    import gradio as gr

    from demos import ui

    with gr.Blocks():
        inputs = ui.condition_inputs(("cobb", "uca"), phantom="spine_coronal")
        plain = ui.condition_inputs(("depth",))
    cobb, uca = inputs
    assert isinstance(cobb, gr.Slider) and (cobb.minimum, cobb.maximum, cobb.value) == (0.0, 60.0, 30.0)
    assert cobb.label.startswith("cobb: Cobb angle")
    assert isinstance(uca, gr.Number) and uca.label == ("uca: ultrasound curve angle from the transverse-process "
                                                        "lines [degrees]")
    assert isinstance(plain[0], gr.Number) and plain[0].label == "depth"
    assert ui.condition_values(("cobb", "uca"), [32.5, "12"], phantom="spine_coronal") == {"cobb": 32.5, "uca": 12.0}
    with pytest.raises(ui.DemoError, match=r"^cobb must be a number in \[0, 60\], got 75"):
        ui.condition_values(("cobb",), [75], phantom="spine_coronal")
    with pytest.raises(ui.DemoError, match=r"^uca must be a number, got 'steep'"):
        ui.condition_values(("uca",), ["steep"])
    with pytest.raises(ui.DemoError, match=r"^kl_grade must be an integer in \[0, 4\], got 2.5"):
        ui.condition_values(("kl_grade",), [2.5], phantom="knee")


def test_demo_read_stack(tmp_path: Path):
    from demos import ui

    arr = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "vpi.npy", arr)
    stack, notes = ui.read_stack([str(tmp_path / "vpi.npy")], 5)
    np.testing.assert_array_equal(stack, arr)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"d{k}.png")
        Image.fromarray((arr[k] * 255).astype(np.uint8)).save(paths[-1])
    assert ui.read_stack(paths, 3)[0].shape == (3, 8, 8)
    with pytest.raises(ui.DemoError, match=r"^got 3 source image\(s\) \(d0.png, d1.png, d2.png\) but the model's "
                                           r"source has 5 channels"):
        ui.read_stack(paths, 5)
    with pytest.raises(ui.DemoError, match=r"^no input: upload 5 image"):
        ui.read_stack(None, 5)
