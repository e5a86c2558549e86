"""The generic training loop: data order, schedules, EMA, groups, accumulation, resume, DDP, cache."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_helpers as th  # noqa: E402

from medgen import checkpoint as ck  # noqa: E402
from medgen import train as tr  # noqa: E402
from medgen.config import TrainConfig  # noqa: E402
from medgen.utils import derive_seed, git_sha, package_versions, seed_everything  # noqa: E402

ROOT = HERE.parent


def _fit(cfg, out_dir, **kwargs):
    method, data = th.build(cfg)
    result = tr.fit(method, data, cfg.train, out_dir=out_dir, run_config=cfg, seed=cfg.seed, progress=False,
                    device="cpu", **kwargs)
    return method, result


def _weights(run_dir, ema=False) -> dict[str, torch.Tensor]:
    return load_file(ck.latest_checkpoint(run_dir) / (ck.EMA_FILE if ema else ck.WEIGHTS_FILE))


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / tr.LOG_FILE).read_text().splitlines()]


def _assert_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# --------------------------------------------------------------------------------------
# utils
# --------------------------------------------------------------------------------------
def test_utils_provenance_and_seeding(tmp_path):
    assert git_sha(tmp_path) == "unknown"
    sha = git_sha(ROOT)
    assert sha == "unknown" or (len(sha) == 40 and int(sha, 16) >= 0)
    assert {"python", "medgen", "torch", "numpy", "safetensors"} <= set(package_versions())
    assert derive_seed(1, "epoch", 2) == derive_seed(1, "epoch", 2) != derive_seed(1, "epoch", 3)
    assert 0 <= derive_seed(0) < 2**63
    seed_everything(5)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(5)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------
# data order, schedules, EMA
# --------------------------------------------------------------------------------------
def test_data_order_is_pure_function_of_seed_and_step():
    n, bs = 10, 4
    stream = [i for s in range(5) for i in tr.step_indices(n, 7, s, bs)]  # 20 items = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # every epoch has its own permutation
    assert tr.step_indices(n, 7, 3, bs) == tr.step_indices(n, 7, 3, bs) != tr.step_indices(n, 8, 3, bs)
    shards = [list(tr.StepBatchSampler(n, bs, 7, 2, 4, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*shards)] == [tr.step_indices(n, 7, s, bs) for s in (2, 3)]


def test_lr_schedule_warmup_constant_cosine():
    const = TrainConfig(steps=10, warmup_steps=4)
    assert [tr.lr_factor(s, const) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = replace(const, lr_schedule="cosine")
    values = [tr.lr_factor(s, cos) for s in range(10)]
    assert values[:5] == [0.25, 0.5, 0.75, 1.0, 1.0] and all(a > b for a, b in zip(values[4:], values[5:]))
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    with pytest.raises(ValueError, match="train.lr_schedule must be 'constant' or 'cosine'"):
        tr.validate_train_config(replace(const, lr_schedule="linear"))


def test_ema_update_warmup_and_integer_copy():
    update = tr.ema_update_fn(0.99)
    ema, cur = [torch.zeros(2)], [torch.ones(2)]
    update(ema, cur, torch.tensor(1))  # decay min(0.99, 2/11)
    torch.testing.assert_close(ema[0], torch.full((2,), 9 / 11))
    ema_int = [torch.tensor([1])]
    update(ema_int, [torch.tensor([7])], 1000)
    assert ema_int[0].item() == 7


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def test_same_seed_identical_weights_other_seed_differs(tmp_path):
    cfg = th.tiny_config(steps=4)
    _fit(cfg, tmp_path / "a")
    _fit(cfg, tmp_path / "b")
    _fit(replace(cfg, seed=1), tmp_path / "c")
    _assert_equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    _assert_equal(_weights(tmp_path / "a", ema=True), _weights(tmp_path / "b", ema=True))
    assert not torch.equal(_weights(tmp_path / "a")["net.0.weight"], _weights(tmp_path / "c")["net.0.weight"])


def test_fit_learns_logs_and_leaves_ema_weights(tmp_path):
    cfg = th.tiny_config(steps=8, log_every=2, warmup_steps=2)
    method, result = _fit(cfg, tmp_path)
    log = _log(tmp_path)
    assert [r["step"] for r in log] == [2, 4, 6, 8]
    assert {"step", "lr", "wall_time_s", "model/loss", "model/mae"} == set(log[0])
    assert log[-1]["model/loss"] < 0.5 * log[0]["model/loss"]
    assert log[0]["lr"] == pytest.approx(cfg.train.lr)
    assert result.step == 8 and result.resumed_from == 0 and result.checkpoint.name == "step_00000008"
    assert result.losses["model/loss"] == pytest.approx(log[-1]["model/loss"])
    assert not method.training and int(method.version) == 3
    ema = _weights(tmp_path, ema=True)
    assert all(torch.equal(method.state_dict()[k], v) for k, v in ema.items())
    assert not torch.equal(_weights(tmp_path)["net.0.weight"], ema["net.0.weight"])


def test_progress_bar_shows_loss(tmp_path, capsys):
    cfg = th.tiny_config(steps=2)
    method, data = th.build(cfg)
    tr.fit(method, data, cfg.train, out_dir=tmp_path, run_config=cfg, progress=True, device="cpu")
    err = capsys.readouterr().err
    assert "unit" in err and "2/2" in err and "loss=" in err


def test_grad_accumulation_matches_full_batch(tmp_path):
    cfg = th.tiny_config("test_regressor_det", steps=4, batch_size=4)
    _fit(cfg, tmp_path / "full")
    _fit(replace(cfg, train=replace(cfg.train, grad_accum=2)), tmp_path / "accum")
    _assert_equal(_weights(tmp_path / "full"), _weights(tmp_path / "accum"), atol=1e-6)
    with pytest.raises(ValueError, match="train.grad_accum: must divide train.batch_size=4, got 3"):
        replace(cfg, train=replace(cfg.train, grad_accum=3))  # refused where the config is built
    method, data = th.build(cfg)
    with pytest.raises(ValueError, match=r"train.batch_size=4 is not divisible by world_size\*grad_accum=1\*3"):
        tr.fit(method, data, replace(cfg.train, grad_accum=3), out_dir=tmp_path / "bad", progress=False, device="cpu")


def test_grad_clip_per_group_and_disabled(tmp_path, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        calls.append((len(list(params)), max_norm))
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _fit(th.tiny_config("test_gan", steps=2, grad_clip=0.5), tmp_path / "a")
    assert calls == [(4, 0.5), (4, 0.5)] * 2  # generator and discriminator groups, 2 steps
    calls.clear()
    _fit(th.tiny_config(steps=2, grad_clip=0.0), tmp_path / "b")
    assert calls == []


def test_gan_groups_stepped_in_order_and_isolated(tmp_path, monkeypatch):
    cfg = th.tiny_config("test_gan", steps=3, ema_decay=0.0)
    method, _ = _fit(cfg, tmp_path / "gan")
    assert method.calls == ["generator", "discriminator"] * 3
    assert {"generator/loss", "generator/adv", "discriminator/loss"} <= set(_log(tmp_path / "gan")[0])
    assert set(ck.load_training_state(tmp_path / "gan")["optimizers"]) == {"generator", "discriminator"}
    monkeypatch.setattr(th.TinyGAN, "freeze_discriminator", True)
    init, _ = th.build(cfg)
    frozen, _ = _fit(cfg, tmp_path / "frozen")
    for k, v in init.state_dict().items():  # the generator's loss flows through D but must not update it
        assert torch.equal(frozen.state_dict()[k], v) == k.startswith("disc."), k
    assert not torch.equal(method.state_dict()["disc.0.weight"], init.state_dict()["disc.0.weight"])


def test_group_settings_lrs_betas_and_every_k(tmp_path):
    cfg = th.tiny_config("test_multi", steps=4, ema_decay=0.0, grad_accum=2, log_every=4)
    method, _ = _fit(cfg, tmp_path / "run")
    assert [g for g, _ in method.seen] == ["main", "main", "aux", "aux", "main", "main"] * 2  # aux: steps 0, 2
    state = ck.load_training_state(tmp_path / "run")["optimizers"]
    main, aux = state["main"]["param_groups"][0], state["aux"]["param_groups"][0]
    assert (main["lr"], tuple(main["betas"])) == (cfg.train.lr, cfg.train.betas)
    assert (aux["lr"], tuple(aux["betas"])) == (0.5 * cfg.train.lr, (0.5, 0.9))
    assert state["aux"]["state"][0]["step"] == 2 and state["main"]["state"][0]["step"] == 4
    log = _log(tmp_path / "run")[0]
    assert log["aux/lr"] == 0.5 * cfg.train.lr and "main/lr" not in log and {"main/loss", "aux/gap"} <= set(log)
    # the aux head only moves on the steps aux runs: after steps 0-1 it is where step 0 left it
    one, _ = _fit(replace(cfg, train=replace(cfg.train, steps=1)), tmp_path / "one")
    two, _ = _fit(replace(cfg, train=replace(cfg.train, steps=2)), tmp_path / "two")
    assert torch.equal(one.head_aux.weight, two.head_aux.weight)
    assert not torch.equal(one.head_main.weight, two.head_main.weight)


def test_begin_step_draws_are_shared_by_the_groups_and_per_micro_batch(tmp_path):
    cfg = th.tiny_config("test_multi", steps=2, ema_decay=0.0, grad_accum=2)
    method, _ = _fit(cfg, tmp_path)
    (g0, a), (_, b), (g2, c), (_, d) = method.seen[:4]  # step 0: main on micro 0, 1; then aux on micro 0, 1
    assert (g0, g2) == ("main", "aux") and torch.equal(a, c) and torch.equal(b, d) and not torch.equal(a, b)
    assert not torch.equal(method.seen[4][1], a)  # step 1 draws anew
    expected = torch.Generator().manual_seed(derive_seed(cfg.seed, "begin", 0, 0))
    assert torch.equal(a, 0.1 * torch.randn(a.shape, generator=expected))


def test_shared_trunk_is_stepped_by_both_groups_and_averaged_once(tmp_path, monkeypatch):
    cfg = th.tiny_config("test_multi", steps=1, ema_decay=0.5)
    init, _ = th.build(cfg)
    stepped = []
    real = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: stepped.append(
        [p.clone() for p in self.param_groups[0]["params"]]) or real(self, *a, **k))
    method, _ = _fit(cfg, tmp_path)
    # aux's optimiser saw the trunk as main's step left it: both groups update it in turn
    assert len(stepped) == 2 and not torch.equal(stepped[1][0], init.trunk.weight)
    monkeypatch.undo()
    _fit(replace(cfg, train=replace(cfg.train, steps=2)), tmp_path / "two")
    ema = _weights(tmp_path / "two", ema=True)
    assert sorted(ema) == sorted(init.state_dict())  # one trunk, averaged once
    raw1, raw2 = _weights(tmp_path)["trunk.weight"], _weights(tmp_path / "two")["trunk.weight"]
    w = 1 - min(0.5, 2 / 11)  # the EMA copies step 1, then step 2 with decay min(0.5, (1 + 1) / (10 + 1))
    torch.testing.assert_close(ema["trunk.weight"], torch.lerp(raw1, raw2, w), atol=1e-7, rtol=0)


def test_shared_parameters_need_a_declaration_and_settings_a_known_group(tmp_path, monkeypatch):
    from medgen.methods.base import GroupSettings

    cfg = th.tiny_config("test_multi", steps=1)
    monkeypatch.setattr(th.TinyMulti, "optim_settings", lambda self: {"aux": GroupSettings(every=2)})
    with pytest.raises(ValueError, match=r"param_groups\(\)\['aux'\] shares parameters.*shared=True"):
        _fit(cfg, tmp_path / "a")
    monkeypatch.setattr(th.TinyMulti, "optim_settings", lambda self: {"critic": GroupSettings()})
    with pytest.raises(ValueError, match="names group 'critic', which param_groups\\(\\) lacks"):
        _fit(cfg, tmp_path / "b")
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        GroupSettings(every=0)


def test_amp_never_used_on_cpu(tmp_path, monkeypatch):
    def no_autocast(*args, **kwargs):
        raise AssertionError("autocast used on CPU")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    _, result = _fit(th.tiny_config(steps=2, amp=True), tmp_path)
    assert result.step == 2


def test_diverging_loss_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(th.TinyRegressor, "training_step",
                        lambda self, batch, group, generator=None: {"loss": self.net(batch.source).sum() * math.nan})
    with pytest.raises(FloatingPointError, match="step 1: model/loss is nan"):
        _fit(th.tiny_config(steps=3), tmp_path)


def test_sample_grids(tmp_path):
    cfg = th.tiny_config(steps=4, sample_every=2)
    _fit(cfg, tmp_path)
    files = sorted(p.name for p in (tmp_path / tr.SAMPLES_DIR).iterdir())
    assert files == ["step_00000002.png", "step_00000004.png"]
    grid = np.asarray(Image.open(tmp_path / tr.SAMPLES_DIR / files[-1]))
    assert grid.shape == (4 * 66 - 2, 3 * 66 - 2, 3)  # 4 samples x (source | prediction | target), 8 px -> 64 px
    first = th.make_pairs(cfg.data, "train")[0]
    expected = ((first["source"][0] + 1) * 127.5).round().byte().numpy().repeat(8, 0).repeat(8, 1)
    assert np.array_equal(grid[:64, :64, 0], expected)
    target = ((first["target"][0] + 1) * 127.5).round().byte().numpy().repeat(8, 0).repeat(8, 1)
    assert np.array_equal(grid[:64, 132:196, 1], target)


# --------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["test_gan", "test_multi"])
def test_resume_after_stop_is_exact(tmp_path, method):
    cfg = th.tiny_config(method, steps=6, ckpt_every=2, warmup_steps=2, lr_schedule="cosine")
    _fit(cfg, tmp_path / "full")
    _, first = _fit(cfg, tmp_path / "split", stop_at_step=3)
    assert first.step == 3 and ck.read_manifest(tmp_path / "split")["complete"] is False
    with open(tmp_path / "split" / tr.LOG_FILE, "a") as fh:  # what a kill after the checkpoint leaves
        fh.write('{"step": 4, "lr": 0.01}\n{"step": 5, "l')
    _, second = _fit(cfg, tmp_path / "split")
    assert second.resumed_from == 3 and second.step == 6
    _assert_equal(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
    _assert_equal(_weights(tmp_path / "full", ema=True), _weights(tmp_path / "split", ema=True))
    assert [r["step"] for r in _log(tmp_path / "split")] == list(range(1, 7))


@pytest.mark.slow
@pytest.mark.parametrize("method,cls", [("test_regressor", "TinyRegressor"), ("test_multi", "TinyMulti")])
def test_resume_after_sigkill_is_exact(tmp_path, method, cls):
    """test_multi: a trunk shared by two groups, one of them every 2nd step with its own lr and betas,
    draws in begin_step; killed at step >= 6 with checkpoints every 3, so a resume may start on an
    odd step, where the every-2 group does not run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "train_helpers.py"), str(out), "--steps", "12", "--ckpt-every", "3",
           "--sleep", "0.1", "--method", method, "--accum", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        th.wait_for_step(out, 6)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, output
    step = int(ck.read_manifest(out)["step"])
    assert 6 <= step < 12  # killed mid-run, latest still names a complete checkpoint
    assert type(ck.load_translator(out)).__name__ == cls
    cfg = th.tiny_config(method, steps=12, ckpt_every=3, grad_accum=2)
    _, resumed = _fit(cfg, out)
    assert resumed.resumed_from == step
    assert [r["step"] for r in _log(out)] == list(range(1, 13))
    _fit(cfg, tmp_path / "full")
    _assert_equal(_weights(tmp_path / "full"), _weights(out))
    _assert_equal(_weights(tmp_path / "full", ema=True), _weights(out, ema=True))


def test_resume_refuses_other_config_and_seed(tmp_path):
    cfg = th.tiny_config(steps=2)
    _fit(cfg, tmp_path)
    other = replace(cfg, train=replace(cfg.train, lr=0.5))
    with pytest.raises(ck.CheckpointError, match=r"config.json: .*another config.*train.lr: 0.01 != 0.5"):
        _fit(other, tmp_path)
    with pytest.raises(ck.CheckpointError, match="trained with seed 0, asked 3"):
        method, data = th.build(cfg)
        tr.fit(method, data, cfg.train, out_dir=tmp_path, run_config=cfg, seed=3, progress=False, device="cpu")
    _, fresh = _fit(other, tmp_path, resume=False)  # resume=False starts over in the same folder
    assert fresh.resumed_from == 0 and ck.read_config(tmp_path) == other and len(_log(tmp_path)) == 2


# --------------------------------------------------------------------------------------
# DDP (2 processes, gloo, CPU)
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "train_helpers.py"), str(out), "--steps", "4", "--batch", "8", "--accum", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "done step=4" in run.stdout
    assert ck.read_manifest(out)["world_size"] == 2
    # one process, same global batch of 8 split into the same 2 micro-batches of 4
    cfg = th.tiny_config(steps=4, batch_size=8, grad_accum=2)
    _fit(cfg, tmp_path / "single")
    _assert_equal(_weights(out), _weights(tmp_path / "single"), atol=1e-5)
    _assert_equal(_weights(out, ema=True), _weights(tmp_path / "single", ema=True), atol=1e-5)


# --------------------------------------------------------------------------------------
# train_or_load
# --------------------------------------------------------------------------------------
def test_train_or_load_trains_once_then_loads(tmp_path, monkeypatch):
    cfg = th.tiny_config(steps=3)
    trained = tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    run_dir = tr.run_dir_for(cfg, tmp_path)
    assert run_dir.parent.name == "unit" and ck.read_manifest(run_dir)["step"] == 3 and not trained.training

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(tr, "fit", no_training)
    loaded = tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    _assert_equal(loaded.state_dict(), trained.state_dict())
    with pytest.raises(AssertionError, match="trained again"):
        tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu", force=True)


def test_train_or_load_resumes_partial_run(tmp_path):
    cfg = th.tiny_config(steps=4)
    _fit(cfg, tr.run_dir_for(cfg, tmp_path), stop_at_step=2)
    method = tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    _fit(cfg, tmp_path / "full")
    assert [r["step"] for r in _log(tr.run_dir_for(cfg, tmp_path))] == [1, 2, 3, 4]
    _assert_equal(_weights(tr.run_dir_for(cfg, tmp_path)), _weights(tmp_path / "full"))
    assert all(torch.equal(method.state_dict()[k], v) for k, v in _weights(tmp_path / "full", ema=True).items())


def test_train_or_load_refuses_patient_overlap(tmp_path):
    cfg = th.tiny_config(dataset="test_pairs_leaky")
    pattern = r"test_pairs_leaky'?: train and test share 4 patient\(s\): p2, p3.*refusing"
    with pytest.raises(tr.SplitOverlapError, match=pattern):
        tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    assert not tr.run_dir_for(cfg, tmp_path).exists()


def test_untrainable_method_gets_a_loadable_checkpoint(tmp_path, monkeypatch):
    cfg = th.tiny_config("test_identity", steps=5)
    method, result = _fit(cfg, tmp_path / "run")
    assert result.step == 5 and ck.read_manifest(tmp_path / "run")["complete"] is True
    assert not (tmp_path / "run" / tr.LOG_FILE).exists() or _log(tmp_path / "run") == []
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(ck.load_translator(tmp_path / "run").translate(x), x)
    tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    monkeypatch.setattr(tr, "fit", lambda *a, **k: pytest.fail("trained again"))
    assert isinstance(tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu"), th.TinyIdentity)


def test_train_or_load_waits_for_a_concurrent_trainer(tmp_path, monkeypatch):
    import threading
    import time

    cfg = th.tiny_config(steps=2)
    run_dir = tr.run_dir_for(cfg, tmp_path)
    fits = []
    real_fit = tr.fit
    monkeypatch.setattr(tr, "fit", lambda *a, **k: fits.append(threading.current_thread().name) or real_fit(*a, **k))
    results = []
    with tr.run_lock(run_dir):  # another process is training this config
        worker = threading.Thread(name="waiter", target=lambda: results.append(
            tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive() and not fits  # waiting, not training
        _fit(cfg, run_dir)  # the other trainer finishes
    worker.join(timeout=60)
    assert results and "waiter" not in fits  # the waiter loaded the finished run instead of training again
    _assert_equal(results[0].state_dict(), _weights(run_dir, ema=True) | {"version": torch.tensor(3)})


def test_a_fresh_run_that_fails_leaves_no_run_folder_but_a_resumable_one_stays(tmp_path, monkeypatch):
    cfg = th.tiny_config(steps=4, ckpt_every=2)
    run_dir = tr.run_dir_for(cfg, tmp_path)
    real_step = th.TinyRegressor.training_step
    calls = []

    def failing(self, batch, group, generator=None):
        calls.append(1)
        if len(calls) >= fail_at:
            raise RuntimeError("out of memory")
        return real_step(self, batch, group, generator)

    monkeypatch.setattr(th.TinyRegressor, "training_step", failing)
    fail_at = 1  # the first step of a fresh run: nothing to resume, so no empty folder is left
    with pytest.raises(RuntimeError, match="out of memory"):
        tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    assert not run_dir.exists()
    assert (run_dir.parent / f".{run_dir.name}.lock").is_file()  # the lock stays for other waiters
    calls.clear()
    fail_at = 4  # after the checkpoint at step 2: the run folder stays and the next call resumes from it
    with pytest.raises(RuntimeError, match="out of memory"):
        tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    assert ck.read_manifest(run_dir)["step"] == 2
    monkeypatch.setattr(th.TinyRegressor, "training_step", real_step)
    tr.train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    _fit(cfg, tmp_path / "full")
    _assert_equal(_weights(run_dir), _weights(tmp_path / "full"))
