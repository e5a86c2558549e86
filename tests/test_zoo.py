"""medgen.zoo: shipped checkpoint if its config matches, else the cached run, else trained; said once if stale."""
from dataclasses import replace

import pytest
import torch

from medgen import zoo
from medgen.checkpoint import export_checkpoint
from medgen.config import apply_overrides, get_preset


@pytest.fixture
def cfg():
    return apply_overrides(get_preset("ci", "quickstart"), ["train.steps=2", "train.num_threads=1"])


@pytest.fixture
def root(zoo_root):
    """A repo-like root without shipped checkpoints (conftest's ``zoo_root``)."""
    return zoo_root


def _ship(cfg, root):
    """Train ``cfg`` under root/runs and export it to root/checkpoints/quickstart/model."""
    from medgen.train import run_dir_for

    zoo.resolve(cfg, root=root, progress=False)
    return export_checkpoint(run_dir_for(cfg, root / "runs"), root / "checkpoints" / "quickstart" / "model",
                             dtype="float32")


def _no_training(monkeypatch):
    import medgen.train

    def refuse(*args, **kwargs):
        raise AssertionError("trained although a model was available")

    monkeypatch.setattr(medgen.train, "_train_cached", refuse)


def test_trains_once_then_loads_from_the_cache(cfg, root, monkeypatch, capsys):
    first = zoo.resolve(cfg, root=root)
    assert "training quickstart at `ci`" in capsys.readouterr().err
    assert not first.training
    _no_training(monkeypatch)
    second = zoo.resolve(cfg, root=root)
    src = torch.zeros(1, 1, 16, 16)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(first.translate(src, generator=g()), second.translate(src, generator=g()))
    assert "loading quickstart" in capsys.readouterr().err


def test_a_matching_shipped_checkpoint_is_used_without_runs(cfg, root, monkeypatch):
    folder = _ship(cfg, root)
    import shutil

    shutil.rmtree(root / "runs")
    _no_training(monkeypatch)
    assert zoo.shipped(cfg, root) == folder
    assert zoo.describe(cfg, root).startswith("shipped `ci` checkpoint")
    assert zoo.resolve(cfg, root=root).config == cfg
    assert zoo.pick(cfg, replace(cfg, preset="smoke"), root=root) == cfg


def test_a_stale_shipped_checkpoint_is_said_once_and_not_used(cfg, root, capsys):
    _ship(cfg, root)
    capsys.readouterr()
    changed = replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * 2))
    assert zoo.shipped(changed, root) is None
    assert zoo.shipped(changed, root) is None
    err = capsys.readouterr().err
    assert err.count("no longer matches") == 1 and "train.lr" in err
    assert zoo.describe(changed, root).startswith("trained at `ci` on first use")
    assert zoo.pick(changed, replace(changed, seed=5), root=root).seed == 5
    other = replace(cfg, data=replace(cfg.data, dataset="volume_slices"))  # another model of the same task
    assert zoo.shipped(other, root) is None and "no longer matches" not in capsys.readouterr().err


def test_ready_means_no_training(cfg, root, monkeypatch):
    import shutil

    assert not zoo.ready(cfg, root)                 # nothing shipped, nothing cached
    _ship(cfg, root)                                # trains into runs/ and ships it
    assert zoo.ready(cfg, root)
    shutil.rmtree(root / "runs")
    assert zoo.ready(cfg, root)                     # the shipped checkpoint alone
    monkeypatch.setenv("RETRAIN", "1")
    assert not zoo.ready(cfg, root)                 # ignored under RETRAIN: resolve would train


def test_retrain_ignores_shipped_checkpoints(cfg, root, monkeypatch):
    _ship(cfg, root)
    monkeypatch.setenv("RETRAIN", "1")
    assert zoo.retrain_requested()
    assert zoo.describe(cfg, root).startswith("trained")
    assert zoo.pick(cfg, replace(cfg, seed=3), root=root).seed == 3


def test_keep_holds_one_model_in_memory(cfg, root):
    a = zoo.resolve(cfg, root=root, keep=True, progress=False)
    assert zoo.is_loaded(cfg, root)
    assert zoo.resolve(cfg, root=root, keep=True, progress=False) is a
    assert zoo.resolve(cfg, root=root, progress=False) is a  # a kept model is returned to every caller


def test_a_damaged_shipped_config_is_skipped_with_one_line(cfg, root, capsys):
    bad = root / "checkpoints" / "quickstart" / "broken"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{not json")
    assert zoo.shipped(cfg, root) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipping shipped checkpoint" in err[0] and "broken" in err[0]
