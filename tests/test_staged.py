"""Staged methods (issue 13.2): a model trained on top of frozen parent runs, cached by the whole chain.

The toy (tests/staged_helpers.py): ``test_stage_base`` (a conv regressor) frozen under
``test_stage_tuner`` (an input adapter: ``pred = base(x + adapter(x))``).
"""
from __future__ import annotations

import copy
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import staged_helpers as sh  # noqa: E402
import train_helpers as th  # noqa: E402

from medgen import checkpoint as ck  # noqa: E402
from medgen import train as tr  # noqa: E402
from medgen import zoo  # noqa: E402
from medgen.config import config_hash, from_dict, from_json, hash_dict, to_dict, to_json  # noqa: E402
from medgen.methods.base import ParentError  # noqa: E402

ROOT = HERE.parent
SRC = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)


@pytest.fixture
def root(zoo_root):
    """A repo-like root without shipped checkpoints (conftest's ``zoo_root``)."""
    return zoo_root


@pytest.fixture
def fits(monkeypatch):
    """Every fit() call of train_or_load, as ``(method name, FitResult)``."""
    calls = []
    real = tr.fit

    def spy(method, *args, **kwargs):
        result = real(method, *args, **kwargs)
        calls.append((kwargs["run_config"].method, result))
        return result

    monkeypatch.setattr(tr, "fit", spy)
    return calls


def _no_training(monkeypatch):
    monkeypatch.setattr(tr, "fit", lambda *a, **k: pytest.fail("trained although every model was cached"))


def _out(model):
    return model.translate(SRC)


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
def test_parents_round_trip_and_enter_the_hash():
    base, child = sh.base_config(), sh.tuner_config()
    assert from_json(to_json(child)) == child and from_dict(to_dict(child)) == child
    assert isinstance(from_json(to_json(child)).parents["base"], type(child))
    assert to_dict(child)["parents"]["base"]["method"] == "test_stage_base"
    # an empty `parents` is left out of the hash: every earlier config keeps its hash
    plain = th.tiny_config()
    assert "parents" not in hash_dict(plain) and config_hash(replace(plain, parents={})) == config_hash(plain)
    # the parent's full config is part of the child's hash
    assert config_hash(child) != config_hash(replace(child, parents={}))
    changed = sh.tuner_config(sh.base_config(lr=0.02))
    assert config_hash(changed) != config_hash(child)
    assert any(d.startswith("parents.base.train.lr") for d in ck.config_diff(child, changed))
    assert hash(child) == hash(sh.tuner_config()) and len({child, sh.tuner_config(), changed}) == 2
    nested = sh.tuner_config(sh.tuner_config())  # a parent with a parent of its own
    assert from_json(to_json(nested)) == nested and config_hash(nested) != config_hash(child)
    with pytest.raises(Exception, match=r"parents\.base\.bogus"):
        from_dict({**to_dict(child), "parents": {"base": {**to_dict(base), "bogus": 1}}})


# --------------------------------------------------------------------------------------
# Method.attach_parents
# --------------------------------------------------------------------------------------
def test_attach_parents_freezes_them_outside_the_module_tree():
    base, _ = th.build(sh.base_config())
    base.train()
    child, _ = th.build(sh.tuner_config())
    child.attach_parents({"base": base})
    assert child.parents["base"] is base and list(child.parents) == ["base"]
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    assert set(child.state_dict()) == {k for k in child.state_dict() if k.startswith("adapter.")}
    assert len(list(child.parameters())) == 4  # the adapter's two convs only
    child.train()
    assert child.training and not base.training  # .train() does not reach the parents
    # the gradient flows through the frozen parent into the adapter only
    loss = child(SRC).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in child.parameters()) and all(p.grad is None for p in base.parameters())
    # deepcopy (EMA copy, export copy) shares the frozen parents
    twin = copy.deepcopy(child)
    assert twin.parents["base"] is base and twin.adapter is not child.adapter
    # .to() moves the parents to the child's device; they keep their dtype
    child.to(torch.float64)
    assert child.adapter[0].weight.dtype == torch.float64 and base.net[0].weight.dtype == torch.float32
    child.to("meta")
    assert base.net[0].weight.device.type == "meta"


def test_attach_parents_names_missing_and_unknown():
    child, _ = th.build(sh.tuner_config())
    base, _ = th.build(sh.base_config())
    with pytest.raises(ParentError, match=r"method 'test_stage_tuner': missing parent 'base' \(its parents: base"):
        child.attach_parents({})
    with pytest.raises(ParentError, match=r"unknown parent 'extra'"):
        child.attach_parents({"base": base, "extra": base})
    with pytest.raises(KeyError, match="has no parent 'base' attached"):
        child(SRC)
    plain, _ = th.build(th.tiny_config())
    with pytest.raises(ParentError, match=r"method 'test_regressor': unknown parent 'base' \(its parents: none"):
        plain.attach_parents({"base": base})
    assert len(plain.parents) == 0


# --------------------------------------------------------------------------------------
# train_or_load / zoo.resolve: cache, parent change, manifest
# --------------------------------------------------------------------------------------
def test_parents_trained_first_then_everything_cached(root, fits, monkeypatch, capsys):
    cfg = sh.tuner_config()
    child = zoo.resolve(cfg, root=root)
    assert [m for m, _ in fits] == ["test_stage_base", "test_stage_tuner"]
    err = capsys.readouterr().err
    assert "training parent 'base' (unit_base/test_stage_base) of unit_tuner" in err and "training unit_tuner" in err
    runs = root / "runs"
    manifest = ck.read_manifest(tr.run_dir_for(cfg, runs))
    assert manifest["parents"] == {"base": config_hash(sh.base_config())}
    assert "parents" not in ck.read_manifest(tr.run_dir_for(sh.base_config(), runs))
    assert set(load_file(ck.latest_checkpoint(tr.run_dir_for(cfg, runs)) / ck.WEIGHTS_FILE)) == \
        {"adapter.0.weight", "adapter.0.bias", "adapter.2.weight", "adapter.2.bias"}
    # the parent is the cached base model, untouched by the child's training
    base = child.parents["base"]
    assert not child.training and not base.training
    saved = load_file(ck.latest_checkpoint(tr.run_dir_for(sh.base_config(), runs)) / ck.EMA_FILE)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in saved.items())
    # second call: nothing trains, same outputs
    _no_training(monkeypatch)
    again = zoo.resolve(cfg, root=root)
    assert "loading unit_tuner" in capsys.readouterr().err
    assert torch.equal(_out(again), _out(child))
    assert torch.equal(_out(tr.train_or_load(cfg, root=runs, progress=False)), _out(child))


def test_a_changed_parent_retrains_the_child_an_unchanged_one_is_reused(root, fits):
    cfg = sh.tuner_config()
    first = zoo.resolve(cfg, root=root, progress=False)
    fits.clear()
    changed = sh.tuner_config(sh.base_config(steps=4))
    second = zoo.resolve(changed, root=root, progress=False)
    assert [m for m, _ in fits] == ["test_stage_base", "test_stage_tuner"]
    assert tr.run_dir_for(changed, root / "runs") != tr.run_dir_for(cfg, root / "runs")
    assert ck.read_manifest(tr.run_dir_for(changed, root / "runs"))["parents"] == {
        "base": config_hash(sh.base_config(steps=4))}
    assert not torch.equal(_out(first), _out(second))
    fits.clear()
    child_only = sh.tuner_config(lr=0.02)  # the child changes, its parent does not: the parent is reused
    zoo.resolve(child_only, root=root, progress=False)
    assert [m for m, _ in fits] == ["test_stage_tuner"] and fits[0][1].resumed_from == 0


def test_a_parent_of_a_parent_is_resolved_recursively(root, fits):
    mid = sh.tuner_config()
    top = replace(sh.tuner_config(mid, steps=2), name="unit_tuner2")
    model = zoo.resolve(top, root=root, progress=False)
    assert [m for m, _ in fits] == ["test_stage_base", "test_stage_tuner", "test_stage_tuner"]
    assert model.parents["base"].parents["base"].config == sh.base_config()
    assert ck.read_manifest(tr.run_dir_for(top, root / "runs"))["parents"] == {"base": config_hash(mid)}


# --------------------------------------------------------------------------------------
# loading a child: load_translator, zoo.resolve (shipped), no parents set by hand
# --------------------------------------------------------------------------------------
def test_load_translator_resolves_the_saved_parents(root, monkeypatch):
    cfg = sh.tuner_config()
    trained = zoo.resolve(cfg, root=root, progress=False)
    _no_training(monkeypatch)
    run = tr.run_dir_for(cfg, root / "runs")
    loaded = ck.load_translator(run, runs=root / "runs")
    assert isinstance(loaded.parents["base"], sh.StageBase) and torch.equal(_out(loaded), _out(trained))
    monkeypatch.setenv("MEDGEN_RUNS", str(root / "runs"))  # what `medgen sample` on a child checkpoint sees
    assert torch.equal(_out(ck.load_translator(run)), _out(trained))


def test_a_shipped_child_loads_with_its_parents_from_the_finder(root, monkeypatch):
    import shutil

    cfg = sh.tuner_config()
    trained = zoo.resolve(cfg, root=root, progress=False)
    monkeypatch.setenv("MEDGEN_RUNS", str(root / "runs"))  # export loads the child, so its parents too
    shipped = ck.export_checkpoint(tr.run_dir_for(cfg, root / "runs"), root / "checkpoints" / "unit" / "tuner",
                                   dtype="float32", verify_source=SRC)
    monkeypatch.delenv("MEDGEN_RUNS")
    assert ck.read_manifest(shipped)["parents"] == {"base": config_hash(sh.base_config())}
    shutil.rmtree(root / "runs" / "unit_tuner")  # only the parent's run is left
    _no_training(monkeypatch)
    assert zoo.shipped(cfg, root) == shipped
    model = zoo.resolve(cfg, root=root, progress=False)
    assert torch.equal(_out(model), _out(trained))


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def test_a_missing_or_unknown_parent_name_is_refused_before_training(root, fits):
    no_parents = replace(sh.tuner_config(), parents={})
    with pytest.raises(ParentError, match=r"^method 'test_stage_tuner': missing parent 'base'") as err:
        zoo.resolve(no_parents, root=root, progress=False)
    assert "\n" not in str(err.value)
    extra = replace(sh.tuner_config(), parents={"base": sh.base_config(), "other": sh.base_config()})
    with pytest.raises(ParentError, match=r"unknown parent 'other'"):
        tr.train_or_load(extra, root=root / "runs", progress=False)
    with pytest.raises(ParentError, match=r"method 'test_stage_base': unknown parent 'base'"):
        zoo.resolve(replace(sh.base_config(), parents={"base": sh.base_config()}), root=root, progress=False)
    assert fits == [] and not (root / "runs").exists()


def test_a_parent_that_cannot_be_had_is_one_line_naming_it(root, monkeypatch):
    bad = sh.tuner_config(replace(sh.base_config(), method="no_such_method"))
    with pytest.raises(ParentError) as err:
        zoo.resolve(bad, root=root, progress=False)
    text = str(err.value)
    assert "\n" not in text and text.startswith("unit_tuner (test_stage_tuner): parent 'base' (unit_base/no_such_method")
    assert "no_such_method" in text
    # a cached parent whose weights were damaged: loading the child names the parent and the file
    cfg = sh.tuner_config()
    zoo.resolve(cfg, root=root, progress=False)
    weights = ck.latest_checkpoint(tr.run_dir_for(sh.base_config(), root / "runs")) / ck.EMA_FILE
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ParentError) as err:
        ck.load_translator(tr.run_dir_for(cfg, root / "runs"), runs=root / "runs")
    text = str(err.value)
    assert "\n" not in text and "parent 'base'" in text and "ema.safetensors" in text
    # a grandparent's failure names the whole chain
    top = replace(sh.tuner_config(bad), name="unit_tuner2")
    with pytest.raises(ParentError, match=r"^unit_tuner2 \(test_stage_tuner\): parent 'base': unit_tuner "
                                          r"\(test_stage_tuner\): parent 'base' \(unit_base/no_such_method"):
        zoo.resolve(top, root=root, progress=False)


# --------------------------------------------------------------------------------------
# kill / resume of the child
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_child_resume_after_sigkill_is_exact(tmp_path, fits):
    runs = tmp_path / "killed"
    cfg = sh.tuner_config(steps=12, ckpt_every=3)
    child_run = tr.run_dir_for(cfg, runs)
    cmd = [sys.executable, str(HERE / "staged_helpers.py"), str(runs), "--steps", "12", "--ckpt-every", "3",
           "--sleep", "0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        th.wait_for_step(child_run, 6)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, output
    step = int(ck.read_manifest(child_run)["step"])
    assert 6 <= step < 12
    resumed = tr.train_or_load(cfg, root=runs, progress=False, device="cpu")
    assert [(m, r.resumed_from) for m, r in fits] == [("test_stage_tuner", step)]  # the parent was cached
    full = tr.train_or_load(cfg, root=tmp_path / "full", progress=False, device="cpu")
    for name in (ck.WEIGHTS_FILE, ck.EMA_FILE):
        a = load_file(ck.latest_checkpoint(child_run) / name)
        b = load_file(ck.latest_checkpoint(tr.run_dir_for(cfg, tmp_path / "full")) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(_out(resumed), _out(full))
