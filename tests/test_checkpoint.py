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
from medgen.utils import atomic_write_bytes, atomic_write_text, sha256_file  # noqa: E402


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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "manifest.json",
                                                     "ood.safetensors"]  # + the out-of-distribution calibration
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


# ------------------------------------------------------------------------------ weight hashes
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "mri_to_ct" / "ddim_image-t1w"
needs_shipped = pytest.mark.skipif(not SHIPPED.is_dir(), reason="shipped mri_to_ct checkpoint missing")


def _damage(path: Path, kind: str, size: int = 4096) -> None:
    """Overwrite ``size`` bytes (at most an eighth of the file) at the end of ``path`` (tensor data, not the
    header), same length."""
    data = bytearray(path.read_bytes())
    size = min(size, len(data) // 8)
    start = len(data) - size
    data[start:start + size] = os.urandom(size) if kind == "random" else bytes(size)
    n = path.stat().st_size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == n


def test_every_save_records_the_weight_hashes(trained):
    run, _, _ = trained
    for step in ck.list_checkpoints(run):
        assert ck.read_manifest(step)[ck.HASHES] == {name: sha256_file(step / name)
                                                    for name in (ck.WEIGHTS_FILE, ck.EMA_FILE)}


@needs_shipped
@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_damaged_shipped_weights_are_refused_in_one_line_naming_the_file(tmp_path, monkeypatch, kind):
    """Random bytes used to surface as NaN in the output, zeroed bytes as a silently wrong image."""
    monkeypatch.delenv(ck.NO_VERIFY_ENV, raising=False)
    folder = tmp_path / "ddim"
    shutil.copytree(SHIPPED, folder)
    ck.load_translator(folder)  # the shipped copy carries hashes and passes
    path = folder / ck.EMA_FILE
    _damage(path, kind)
    msg = _one_line_error(ck.CheckpointError, ck.load_translator, folder)
    assert msg.startswith(f"{path}: sha256 ") and "does not match the manifest" in msg
    assert "damaged or was edited" in msg and "verify=False / --no-verify-weights" in msg
    assert ck.load_translator(folder, verify=False).config.method == "cddpm"  # the explicit opt-out
    monkeypatch.setenv(ck.NO_VERIFY_ENV, "1")
    ck.load_translator(folder)  # the environment opt-out
    _one_line_error(ck.CheckpointError, ck.load_translator, folder, verify=True)  # an explicit verify wins


def test_a_manifest_without_hashes_loads_unchecked_until_add_weight_hashes(run_copy, recwarn):
    run, latest, _ = run_copy
    manifest = json.loads((latest / ck.MANIFEST_FILE).read_text())
    del manifest[ck.HASHES]  # a checkpoint from before the hashes
    (latest / ck.MANIFEST_FILE).write_text(json.dumps(manifest))
    weights = {p.name: p.read_bytes() for p in latest.glob("*.safetensors")}
    _damage(latest / ck.EMA_FILE, "zeros")
    ck.load_translator(run)  # nothing to check against: loads, says nothing
    assert not [w for w in recwarn if "sha256" in str(w.message)]
    (latest / ck.EMA_FILE).write_bytes(weights[ck.EMA_FILE])

    hashes = ck.add_weight_hashes(run)
    assert hashes == {name: sha256_file(latest / name) for name in weights}
    assert {p.name: p.read_bytes() for p in latest.glob("*.safetensors")} == weights  # weights untouched
    written = json.loads((latest / ck.MANIFEST_FILE).read_text())
    assert written == {**manifest, ck.HASHES: hashes} and not list(latest.glob(".*tmp"))
    before = (latest / ck.MANIFEST_FILE).read_bytes()
    assert ck.add_weight_hashes(latest) == hashes and (latest / ck.MANIFEST_FILE).read_bytes() == before
    ck.load_translator(run)

    _damage(latest / ck.WEIGHTS_FILE, "random", size=64)  # damage is never sealed in ...
    msg = _one_line_error(ck.CheckpointError, ck.add_weight_hashes, run)
    assert "weights.safetensors" in msg and "refusing" in msg and "force=True" in msg
    assert ck.add_weight_hashes(run, force=True)[ck.WEIGHTS_FILE] == sha256_file(latest / ck.WEIGHTS_FILE)
    ck.load_translator(run, ema=False)  # ... unless forced (weights edited on purpose)
    _truncate(latest / ck.EMA_FILE)
    assert "corrupt safetensors" in _one_line_error(ck.CheckpointError, ck.add_weight_hashes, run, force=True)


def test_resume_checks_the_weights_too(run_copy):
    run, latest, cfg = run_copy
    _damage(latest / ck.WEIGHTS_FILE, "zeros", size=16)
    method, data = th.build(cfg)
    msg = _one_line_error(ck.CheckpointError, fit, method, data, cfg.train, out_dir=run,
                          run_config=cfg, progress=False, device="cpu")
    assert "weights.safetensors" in msg and "does not match the manifest" in msg


def test_export_records_the_hash_of_the_exported_file_and_train_or_load_verifies(quickstart_run, tmp_path,
                                                                                 monkeypatch):
    from medgen.train import run_dir_for, train_or_load

    monkeypatch.delenv(ck.NO_VERIFY_ENV, raising=False)
    cfg, run = quickstart_run
    latest = ck.latest_checkpoint(run)
    assert set(ck.read_manifest(latest)[ck.HASHES]) == {ck.WEIGHTS_FILE, ck.EMA_FILE}
    out = ck.export_checkpoint(run, tmp_path / "ship")
    assert ck.read_manifest(out)[ck.HASHES] == {ck.EMA_FILE: sha256_file(out / ck.EMA_FILE)}
    ck.load_translator(out, config=cfg)

    root = tmp_path / "runs"  # a cached run whose EMA weights were damaged: refused, not silently used
    shutil.copytree(run, run_dir_for(cfg, root), symlinks=True)
    assert train_or_load(cfg, root=root, progress=False).config == cfg  # loaded, verified
    _damage(ck.latest_checkpoint(run_dir_for(cfg, root)) / ck.EMA_FILE, "zeros", size=16)
    msg = _one_line_error(ck.CheckpointError, train_or_load, cfg, root=root, progress=False)
    assert "ema.safetensors" in msg and "does not match the manifest" in msg
    msg = _one_line_error(ck.CheckpointError, ck.export_checkpoint, run_dir_for(cfg, root), tmp_path / "again")
    assert "ema.safetensors" in msg
    again = ck.export_checkpoint(run_dir_for(cfg, root), tmp_path / "again", verify_weights=False)
    ck.load_translator(again)  # re-exported weights carry their own, new hash
