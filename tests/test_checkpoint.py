"""Checkpoint folders: atomic writes, manifest, latest pointer, load_translator and its errors."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_helpers as th  # noqa: E402

from medgen import checkpoint as ck  # noqa: E402
from medgen.config import config_hash, from_json  # noqa: E402
from medgen.train import fit  # noqa: E402
from medgen.utils import atomic_write_bytes, atomic_write_text  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4; returns (run_dir, cfg, fitted method)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = th.tiny_config(steps=4, ckpt_every=2)
    method, data = th.build(cfg)
    fit(method, data, cfg.train, out_dir=run, run_config=cfg, progress=False, device="cpu", keep_last=None)
    return run, cfg, method


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run (tests may damage it); returns (run_dir, checkpoint, cfg)."""
    run, cfg, _ = trained
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return dst, ck.latest_checkpoint(dst), cfg


# --------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# --------------------------------------------------------------------------------------
# what a checkpoint holds
# --------------------------------------------------------------------------------------
def test_checkpoint_files_config_and_manifest(trained):
    run, cfg, _ = trained
    latest = ck.latest_checkpoint(run)
    assert latest.name == "step_00000004" and (run / "latest").is_symlink()
    assert sorted(p.name for p in latest.iterdir()) == sorted(
        [ck.WEIGHTS_FILE, ck.EMA_FILE, ck.STATE_FILE, ck.CONFIG_FILE, ck.MANIFEST_FILE])
    assert from_json((latest / ck.CONFIG_FILE).read_text()) == cfg
    man = ck.read_manifest(run)
    assert man["step"] == 4 and man["total_steps"] == 4 and man["complete"] is True
    assert man["config_hash"] == config_hash(cfg) and man["seed"] == 0 and man["method"] == "test_regressor"
    assert man["split_hash"] == th.make_pairs(cfg.data, "train").split_hash
    assert {"torch", "numpy", "medgen", "python"} <= set(man["versions"])
    assert man["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert man["git_sha"] == "unknown" or len(man["git_sha"]) == 40
    assert man["wall_time_s"] > 0
    datetime.datetime.fromisoformat(man["created"])
    state = ck.load_training_state(run)
    assert state["step"] == 4 and set(state["optimizers"]) == {"model"} and state["ema_n_averaged"] == 4
    assert ck.read_manifest(run / "checkpoints" / "step_00000002")["complete"] is False


def test_save_keeps_last_n_and_latest_points_at_newest(tmp_path):
    cfg = th.tiny_config()
    method, _ = th.build(cfg)
    for step in range(1, 5):
        ck.save_checkpoint(tmp_path, step, model=method, state={"step": step}, config=cfg, keep_last=2,
                           manifest=ck.make_manifest(cfg, step=step, total_steps=4, seed=0))
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert ck.latest_checkpoint(tmp_path).name == "step_00000004"
    assert ck.load_training_state(tmp_path)["step"] == 4


def test_interrupted_save_leaves_latest_on_complete_checkpoint(run_copy, monkeypatch):
    run, before, cfg = run_copy
    method, _ = th.build(cfg)

    def killed(*args, **kwargs):  # the process "dies" while writing optim.pt
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(run, 6, model=method, state={}, config=cfg,
                           manifest=ck.make_manifest(cfg, step=6, total_steps=6, seed=0))
    assert ck.latest_checkpoint(run) == before
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert isinstance(ck.load_translator(run), th.TinyRegressor)


def test_stale_temporary_and_orphan_folders_are_replaced(run_copy):
    run, before, cfg = run_copy
    stale = run / "checkpoints" / ".tmp-step_00000006-abc"  # a SIGKILL during a save leaves this
    stale.mkdir()
    (stale / ck.WEIGHTS_FILE).write_bytes(b"half")
    orphan = run / "checkpoints" / "step_00000006"  # killed between rename and re-pointing latest
    orphan.mkdir()
    assert ck.latest_checkpoint(run) == before
    method, _ = th.build(cfg)
    new = ck.save_checkpoint(run, 6, model=method, state={"step": 6}, config=cfg,
                             manifest=ck.make_manifest(cfg, step=6, total_steps=6, seed=0))
    assert not stale.exists() and new == orphan and (new / ck.WEIGHTS_FILE).is_file()
    assert ck.latest_checkpoint(run) == new.resolve()
    with pytest.raises(ck.CheckpointError, match="already exists and is 'latest'"):
        ck.save_checkpoint(run, 6, model=method, state={}, config=cfg, manifest={})


def test_latest_as_text_file_is_supported(run_copy):
    run, before, _ = run_copy
    (run / "latest").unlink()
    (run / "latest").write_text("checkpoints/step_00000002\n")
    assert ck.latest_checkpoint(run).name == "step_00000002"


# --------------------------------------------------------------------------------------
# load_translator
# --------------------------------------------------------------------------------------
def test_load_translator_gives_ema_weights_in_eval_mode(trained):
    run, cfg, fitted = trained
    latest = ck.latest_checkpoint(run)
    for where in (run, latest, run / "latest"):
        m = ck.load_translator(where, config=cfg)
        assert isinstance(m, th.TinyRegressor) and not m.training
        for name, tensor in load_file(latest / ck.EMA_FILE).items():
            assert torch.equal(m.state_dict()[name], tensor), name
    raw = ck.load_translator(run, ema=False)
    weights = load_file(latest / ck.WEIGHTS_FILE)
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in weights.items())
    assert not torch.equal(weights["net.0.weight"], m.state_dict()["net.0.weight"])  # EMA differs from raw
    src = th.make_pairs(cfg.data, "train")[0]["source"][None]
    assert torch.equal(m.translate(src), fitted.translate(src))  # fit() leaves the EMA weights in place


def test_load_translator_without_ema(tmp_path):
    cfg = th.tiny_config(steps=2, ema_decay=0.0)
    method, data = th.build(cfg)
    fit(method, data, cfg.train, out_dir=tmp_path, run_config=cfg, progress=False, device="cpu")
    assert not (ck.latest_checkpoint(tmp_path) / ck.EMA_FILE).exists()
    loaded = ck.load_translator(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in method.state_dict().items())


def _edit_config(ckpt: Path, section: str | None, key: str, value) -> None:
    data = json.loads((ckpt / ck.CONFIG_FILE).read_text())
    (data[section] if section else data)[key] = value
    (ckpt / ck.CONFIG_FILE).write_text(json.dumps(data))


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _one_line_error(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_error_missing_folder_and_files(run_copy, tmp_path):
    run, latest, _ = run_copy
    msg = _one_line_error(ck.CheckpointNotFoundError, ck.load_translator, tmp_path / "nope")
    assert "nope" in msg and "no such checkpoint folder" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a checkpoint folder" in _one_line_error(ck.CheckpointNotFoundError, ck.load_translator, empty)
    (latest / ck.EMA_FILE).unlink()
    msg = _one_line_error(ck.CheckpointNotFoundError, ck.load_translator, run)
    assert "ema.safetensors" in msg and "missing" in msg
    shutil.rmtree(latest)
    msg = _one_line_error(ck.CheckpointNotFoundError, ck.load_translator, run)
    assert "latest" in msg and "missing checkpoint folder" in msg


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_error_corrupt_safetensors(run_copy, damage):
    run, latest, _ = run_copy
    path = latest / ck.WEIGHTS_FILE
    if damage == "truncate":
        _truncate(path, keep=path.stat().st_size - 7)
    else:
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run, ema=False)
    assert "weights.safetensors" in msg and "corrupt safetensors" in msg


def test_error_corrupt_json_and_state(run_copy):
    run, latest, _ = run_copy
    _truncate(latest / ck.MANIFEST_FILE)
    msg = _one_line_error(ck.CheckpointError, ck.read_manifest, run)
    assert "manifest.json" in msg and "corrupt JSON" in msg
    _truncate(latest / ck.STATE_FILE, keep=100)
    msg = _one_line_error(ck.CheckpointError, ck.load_training_state, run)
    assert "optim.pt" in msg and "corrupt training state" in msg
    _truncate(latest / ck.CONFIG_FILE)
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run)
    assert "config.json" in msg and "corrupt JSON" in msg


def test_error_config_with_unknown_key(run_copy):
    run, latest, _ = run_copy
    _edit_config(latest, "train", "learning_rate", 1.0)
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run)
    assert "config.json" in msg and "learning_rate" in msg


def test_error_unknown_method_uses_registry_message(run_copy):
    run, latest, _ = run_copy
    _edit_config(latest, None, "method", "test_regresor")
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run)
    assert "config.json" in msg and "unknown method 'test_regresor'" in msg and "did you mean 'test_regressor'" in msg


def test_error_shape_mismatch_names_tensor_and_shapes(run_copy):
    run, latest, _ = run_copy
    _edit_config(latest, "model", "channels", [6])
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run)
    assert "ema.safetensors" in msg and "'net.0.weight'" in msg and "[4, 1, 3, 3]" in msg and "[6, 1, 3, 3]" in msg


def test_error_missing_tensors_named(run_copy):
    run, latest, _ = run_copy
    _edit_config(latest, None, "method", "test_gan")
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run)
    assert "missing: disc.0.bias" in msg and "unexpected: net.0.bias" in msg and "4 more" in msg


def test_error_checkpoint_trained_with_other_config(trained):
    run, cfg, _ = trained
    from dataclasses import replace
    asked = replace(cfg, train=replace(cfg.train, lr=0.5))
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, run, config=asked)
    assert "config.json" in msg and "another config" in msg and "train.lr: 0.01 != 0.5" in msg


# ------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart `ci` cddpm (with EMA) trained once; returns (cfg, run_dir)."""
    from medgen.config import get_preset
    from medgen.train import run_dir_for, train_or_load

    cfg, root = get_preset("ci"), tmp_path_factory.mktemp("export") / "runs"
    train_or_load(cfg, root=root, progress=False)
    return cfg, run_dir_for(cfg, root)


def test_export_fp16_is_smaller_loads_and_keeps_outputs(quickstart_run, tmp_path):
    cfg, run = quickstart_run
    src = torch.rand(2, 1, 16, 16) * 2 - 1
    out = ck.export_checkpoint(run, tmp_path / "ship" / "quick", verify_source=src)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "manifest.json"]
    original = ck.latest_checkpoint(run)
    assert (out / "ema.safetensors").stat().st_size < 0.6 * (original / "ema.safetensors").stat().st_size
    assert {t.dtype for t in load_file(out / "ema.safetensors").values()} == {torch.float16}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["dtype"] == "float16" and manifest["config_hash"] == config_hash(cfg)
    assert manifest["export"]["output_psnr_db"] >= 40.0
    a = ck.load_translator(run, config=cfg).translate(src, generator=torch.Generator().manual_seed(3))
    b = ck.load_translator(out, config=cfg).translate(src, generator=torch.Generator().manual_seed(3))
    assert (a - b).abs().max() < 5e-2 and not torch.equal(a, b)   # fp16 rounding, nothing else


def test_export_refuses_a_lossy_dtype_and_unknown_dtypes(quickstart_run, tmp_path):
    _, run = quickstart_run
    src = torch.rand(2, 1, 16, 16) * 2 - 1
    with pytest.raises(ck.CheckpointError, match="change the output too much"):
        ck.export_checkpoint(run, tmp_path / "ship", verify_source=src, min_psnr_db=float("inf"))
    assert not (tmp_path / "ship").exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ck.CheckpointError, match="unknown dtype 'int8'"):
        ck.export_checkpoint(run, tmp_path / "ship", dtype="int8")
