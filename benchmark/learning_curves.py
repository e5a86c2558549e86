"""Training speed and learning curves of the models the `cpu` plans of the two papers use (issue 15, step 1).

Run on ONE torch thread (the shared 2-core machine: two threads per process thrash)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m benchmark.learning_curves --timing
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m benchmark.learning_curves --curves \\
        --models mri_to_ct/ddim_image-t2w --at 250,500,1000,2000
    ... --timing --timing-models mri_to_ct/ddim_image_3d-t2w --set train.batch_size=2   # a variant (key gets [..])
    .venv/bin/python -m benchmark.learning_curves --list      # the model catalogue only (no torch work)
    .venv/bin/python -m benchmark.learning_curves --render    # rewrite the .md from the CSVs

Outputs (merged with what earlier invocations wrote: rows of the models run now replace theirs):

* ``reports/benchmark/learning_curves_timing.csv``: per model of the `cpu` plans (:func:`cpu_models`) its
  preset steps and batch, whether ``checkpoints/`` ships it (:func:`medgen.zoo.shipped` of the plan's own
  config), seconds per training step with the data cached (``compute_s``: median of ``--timing-steps``
  steps after ``--warm`` untimed ones, on a training split of a few subjects so every step is a cache hit)
  and the extra seconds per step while the first epoch renders the phantoms (``render_s``: one training
  batch through a fresh dataset of the preset's size, minus the same batch again from its cache), and
  whether the dataset's LRU holds the whole split (else every epoch re-renders).
* ``reports/benchmark/learning_curves.csv``: ``model, step, metric, value, n_test, train_s`` -- test-split
  metrics of one run checkpointed at each of ``--at`` steps.
* ``reports/benchmark/learning_curves.md``: both tables (the curves pivoted) under a provenance line.
  Everything below the line ``<!-- proposal -->`` of an existing file is kept (the hand-written budget).

How a curve is measured. The plan's config of the model (``medgen.experiments.<paper>.plan``), with one
torch thread (``train.num_threads=1``, which changes the config hash, so a temporary runs folder,
``--root``, holds the runs) and ``train.steps = max(preset steps, --at)``, is trained by
:func:`medgen.train.fit` in chunks (``stop_at_step`` = each point, resuming from the checkpoint the
previous chunk left in :func:`medgen.train.run_dir_for`'s folder, so the runs are exactly the ones
:func:`medgen.train.train_or_load` would resume). After each chunk the model (EMA weights, eval mode) is
scored on the first ``--n-test`` test subjects with :func:`medgen.predict.predict` and the paper's own
row makers: MRI -> CT by :func:`medgen.experiments.mri_to_ct.rows.quality_rows` (PSNR / SSIM / MAE inside
the spine mask, as Table 1) and Dice by the shipped 2D CT segmenter (:func:`rows.dice_rows`, Tables 2-3;
3D volumes are segmented slice by slice with the same 2D segmenter, a proxy for the unshipped 3D
segmenter, whose ceiling on the real CT is reported beside it as step ``real CT``); the lung supervised
baselines by :func:`medgen.score.score` (PSNR / SSIM, data range 2, one sample per input) on the
config's own test split. Where the plan's model is shipped (trained to the preset's steps), its score on
the same test subjects is added as step ``shipped``.

The MRI -> CT presets use a constant LR after 20 warm-up steps, so the checkpoint at step N *is* an N-step
run. The lung presets decay the LR (cosine to 0 at ``train.steps``): a point at step N is the preset run's
state at N, not an N-step run annealed to 0 (which usually scores at least as well).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

NAME = "learning_curves"
TITLE = "Training speed and learning curves of the `cpu` plans' models (one torch thread)"
MARKER = "<!-- proposal -->"
DEFAULT_CURVES = ("mri_to_ct/ddim_image-t2w", "mri_to_ct/ddim_image_3d-t2w", "mri_to_ct/pix2pix_3d-t2w",
                  "mri_to_ct/syndiff-t2w", "lung_us/conditional_us_linear")
TIMING_COLUMNS = ("model", "task", "method", "preset_steps", "batch", "preset_threads", "n_train", "shipped",
                  "compute_s", "compute_s_min", "render_s", "cache_fits", "records", "total_h_preset")
CURVE_COLUMNS = ("model", "step", "metric", "value", "n_test", "train_s")


# --------------------------------------------------------------------------------------
# The models of the `cpu` plans
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One model a `cpu` notebook uses: a catalogue key, its paper and the plan's config."""

    key: str  # e.g. "mri_to_ct/ddim_image-t2w", "mri_to_ct/registration-two", "lung_us/prior"
    paper: str
    cfg: Any  # RunConfig
    kind: str  # "2d", "3d", "slices", "segmenter", "segmenter_3d", "lung_prior", "lung_supervised"
    contrast: str = "t2w"


def cpu_models(preset: str = "cpu") -> list[Entry]:
    """Every model the ``preset`` plans of mri_to_ct (all methods, both contrasts, 3D, registration,
    segmenters) and lung_us (prior, supervised baselines) name, with the plans' own configs."""
    mp = importlib.import_module("medgen.experiments.mri_to_ct.plan")
    lp = importlib.import_module("medgen.experiments.lung_us.plan")
    p = mp.plan(preset)
    out = []
    for contrast in p.contrasts:
        for m in p.methods_2d:
            out.append(Entry(f"mri_to_ct/{m}-{contrast}", "mri_to_ct", mp.model_config(p, m, contrast), "2d", contrast))
    for m in p.methods_3d:
        out.append(Entry(f"mri_to_ct/{m}-t2w", "mri_to_ct", mp.model_config(p, m, "t2w"), "3d"))
    for reg in ("none", "one", "two"):
        out.append(Entry(f"mri_to_ct/registration-{reg}", "mri_to_ct", mp.registration_config(p, reg), "slices"))
    out.append(Entry("mri_to_ct/segmenter", "mri_to_ct", mp.segmenter_config(p), "segmenter"))
    out.append(Entry("mri_to_ct/segmenter_3d", "mri_to_ct", mp.segmenter_config(p, volume=True), "segmenter_3d"))
    lpl = lp.plan(preset)
    out.append(Entry("lung_us/prior", "lung_us", lp.prior_config(lpl), "lung_prior"))
    for op in lpl.supervised_operators:
        out.append(Entry(f"lung_us/conditional_{op}", "lung_us", lp.supervised_config(lpl, op), "lung_supervised"))
    return out


def find(entries: Sequence[Entry], keys: Sequence[str]) -> list[Entry]:
    by = {e.key: e for e in entries}
    missing = [k for k in keys if k not in by]
    if missing:
        raise SystemExit(f"unknown model {missing[0]!r} (choose from {', '.join(by)})")
    return [by[k] for k in keys]


def with_overrides(entries: Sequence[Entry], overrides: Sequence[str]) -> list[Entry]:
    """``entries`` with ``--set`` overrides applied (:func:`medgen.config.apply_overrides`); their keys get
    `` [k=v ...]`` appended, so a variant's rows sit beside the preset's."""
    if not overrides:
        return list(entries)
    from medgen.config import apply_overrides
    tag = " [" + " ".join(overrides) + "]"
    return [replace(e, key=e.key + tag, cfg=apply_overrides(e.cfg, list(overrides))) for e in entries]


def one_thread(cfg: Any, **train: Any) -> Any:
    """``cfg`` trained on one torch thread (plus any other ``train`` fields)."""
    return replace(cfg, train=replace(cfg.train, num_threads=1, **train))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def _small_n_train(entry: Entry) -> int:
    """Training subjects for the cached-compute timing: every record is rendered by the first step."""
    b = entry.cfg.train.batch_size
    if entry.kind == "slices":
        return 2  # volumes; each gives D slices
    if entry.cfg.data.dataset == "unpaired":
        return 2 * b  # MRI and CT from disjoint halves
    return b


def compute_seconds(entry: Entry, root: Path, warm: int, steps: int) -> tuple[float, float]:
    """(median, min) seconds per optimiser step of ``entry`` with its data cached, from fit's log.jsonl."""
    from medgen.train import LOG_FILE, run_dir_for, train_or_load

    cfg = one_thread(entry.cfg, steps=warm + steps, log_every=1, ckpt_every=0, sample_every=0)
    cfg = replace(cfg, data=replace(cfg.data, n_train=_small_n_train(entry)))
    torch.set_num_threads(1)
    train_or_load(cfg, root=root, progress=False)
    lines = [json.loads(x) for x in (run_dir_for(cfg, root) / LOG_FILE).read_text().splitlines() if x.strip()]
    wall = {int(r["step"]): float(r["wall_time_s"]) for r in lines}
    per = [wall[s] - wall[s - 1] for s in range(warm + 1, warm + steps + 1)]
    return statistics.median(per), min(per)


def render_seconds(entry: Entry) -> tuple[float, bool, int]:
    """(extra seconds per step while records are rendered, whether the LRU holds the split, records):
    the first two training batches of a fresh dataset of the preset's size, minus the same batches cached."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.registry import DATASETS, lookup
    from medgen.train import StepBatchSampler

    cfg = entry.cfg
    ds = lookup(DATASETS, cfg.data.dataset)(cfg.data, "train")
    batches = list(StepBatchSampler(len(ds), cfg.train.batch_size, cfg.seed, 0, 2))
    t0 = time.perf_counter()
    for b in batches:
        ds.__getitems__(b)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        ds.__getitems__(b)
    warm = time.perf_counter() - t0
    records = len(ds.backend)
    fits = int(getattr(ds, "_capacity", 0)) >= records  # the LRU's size (private; sized from the first record)
    return max(0.0, (cold - warm) / len(batches)), fits, records


def run_timing(entries: Sequence[Entry], root: Path, warm: int, steps: int,
               save: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Timing rows of ``entries``; ``save(rows so far)`` after each model (a long run keeps what it measured)."""
    from medgen import zoo

    rows = []
    for e in entries:
        log(f"timing {e.key} ({e.cfg.method}, batch {e.cfg.train.batch_size})")
        try:
            med, low = compute_seconds(e, root / "timing", warm, steps)
            render, fits, records = render_seconds(e)
        except Exception as err:  # noqa: BLE001 -- one model failing is reported, the others still run
            log(f"  FAILED: {type(err).__name__}: {err}")
            med = low = render = float("nan")
            fits, records = False, 0
        t = e.cfg.train
        # steps that render: the first epoch's (each record once, about a batch of records per step) when the
        # LRU holds the split, else about every step
        render_steps = min(t.steps, -(-records // t.batch_size)) if fits else t.steps
        total = (t.steps * med + render_steps * render) / 3600
        rows.append(dict(model=e.key, task=e.cfg.name, method=e.cfg.method, preset_steps=t.steps,
                         batch=t.batch_size, preset_threads=t.num_threads, n_train=e.cfg.data.n_train,
                         shipped=zoo.shipped(e.cfg) is not None, compute_s=round(med, 4), compute_s_min=round(low, 4),
                         render_s=round(render, 4), cache_fits=fits, records=records,
                         total_h_preset=round(total, 3)))
        log(f"  {med:.3f} s/step cached (min {low:.3f}), +{render:.3f} s/step rendering; "
            f"cache holds split: {fits} ({records} records); preset run {total:.2f} h")
        if save is not None:
            save(pd.DataFrame(rows, columns=list(TIMING_COLUMNS)))
    return pd.DataFrame(rows, columns=list(TIMING_COLUMNS))


# --------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------
class _Scorer:
    """Test items and a scoring function per paper, built once per model."""

    def __init__(self, entry: Entry, n_test: int) -> None:
        self.entry = entry
        self._seg = None
        if entry.paper == "mri_to_ct":
            from medgen.experiments.mri_to_ct import rows as mrows
            self.rows = mrows
            self.items = mrows.eval_items(entry.cfg, n_test)
        else:
            import medgen.data  # noqa: F401 -- fills DATASETS
            from medgen.registry import DATASETS, lookup
            ds = lookup(DATASETS, entry.cfg.data.dataset)(replace(entry.cfg.data, n_test=n_test), "test")
            self.items = [dict(ds[i]) for i in range(len(ds))]

    def segmenter(self) -> Any:
        if self._seg is None:
            from medgen import zoo
            mp = importlib.import_module("medgen.experiments.mri_to_ct.plan")
            cfg = mp.segmenter_config(mp.plan(self.entry.cfg.preset))
            if zoo.shipped(cfg) is None:
                raise RuntimeError("the 2D CT segmenter of the plan is not shipped; Dice is skipped")
            self._seg = zoo.resolve(cfg, progress=False)
        return self._seg

    def _segment(self, ct: torch.Tensor) -> torch.Tensor:
        """Label maps of CTs ``[n, 1, *S]``; volumes ``[n, 1, D, H, W]`` slice by slice (sagittal, axis D)."""
        seg = self.segmenter()
        if ct.ndim == 4:
            return self.rows.segment(seg, ct)
        n, c, d, h, w = ct.shape
        flat = ct.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        return self.rows.segment(seg, flat).reshape(n, d, h, w)

    def dice_of(self, labels_of: torch.Tensor, method: str) -> dict[str, float]:
        d = self.rows.dice_rows(self._segment(labels_of), self.items, method=method, contrast=self.entry.contrast,
                                setting="2D")
        out = {}
        for metric in ("dice_volume", "dice_posterior_volume"):
            sel = d[d["metric"] == metric]
            out[metric] = float(sel.groupby("patient_id")["value"].mean().mean())
        return out

    def score(self, model: Any, seed: int = 0) -> dict[str, float]:
        from medgen.predict import predict, stack
        e = self.entry
        batch = 4 if e.kind == "3d" else 16
        preds = predict(model, self.items, seed=seed, batch_size=batch).outputs
        if e.paper == "mri_to_ct":
            q = self.rows.quality_rows(preds, self.items, method=e.key, contrast=e.contrast,
                                       metrics=("psnr", "ssim", "mae"))
            out = {m: float(q[q.metric == m].groupby("patient_id")["value"].mean().mean())
                   for m in ("psnr", "ssim", "mae")}
            try:
                out.update(self.dice_of(preds, e.key))
            except RuntimeError as err:
                log(f"  {err}")
            return out
        from medgen.score import score
        target = stack(self.items, "target")
        s = score(preds, target, ("psnr", "ssim"), data_range=2.0,
                  patient_ids=[str(it["patient_id"]) for it in self.items])
        return {m: float(s[s.metric == m]["value"].mean()) for m in ("psnr", "ssim")}

    def ceiling(self) -> dict[str, float]:
        """Dice of the real CT by the same segmenter (what a perfect translation reaches)."""
        from medgen.predict import stack
        return self.dice_of(stack(self.items, "target"), "real CT")


def run_curve(entry: Entry, at: Sequence[int], root: Path, n_test: int, progress: bool) -> pd.DataFrame:
    """Scores of ``entry``'s one-thread run at each of ``at`` steps (plus the shipped model, the real-CT ceiling)."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen import zoo
    from medgen.registry import DATASETS, METHODS, lookup
    from medgen.train import fit, run_dir_for
    from medgen.utils import seed_everything

    at = sorted(set(int(a) for a in at))
    cfg = one_thread(entry.cfg, steps=max(entry.cfg.train.steps, at[-1]))
    scorer = _Scorer(entry, n_test)
    rows: list[dict[str, Any]] = []

    def add(step: Any, scores: dict[str, float], train_s: float) -> None:
        for metric, value in scores.items():
            rows.append(dict(model=entry.key, step=str(step), metric=metric, value=round(value, 4),
                             n_test=len(scorer.items), train_s=round(train_s, 1)))
        log(f"  {entry.key} @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + f" (train {train_s:.0f} s)")

    torch.set_num_threads(1)
    if entry.paper == "mri_to_ct":
        try:
            add("real CT", scorer.ceiling(), 0.0)
        except RuntimeError as err:
            log(f"  {err}")
    if zoo.shipped(entry.cfg) is not None:
        add(f"shipped ({entry.cfg.train.steps})", scorer.score(zoo.resolve(entry.cfg, progress=False)), 0.0)
    run_dir = run_dir_for(cfg, root)
    train_ds = lookup(DATASETS, cfg.data.dataset)(cfg.data, "train")
    seed_everything(cfg.seed)
    method = lookup(METHODS, cfg.method)(cfg)
    for n in at:
        log(f"training {entry.key} to step {n} ({cfg.train.steps}-step run, {run_dir})")
        result = fit(method, train_ds, cfg.train, out_dir=run_dir, run_config=cfg, seed=cfg.seed, resume=True,
                     progress=progress, stop_at_step=n)
        torch.set_num_threads(1)  # fit restores the caller's threads; keep one for sampling
        with torch.no_grad():
            add(n, scorer.score(method, seed=cfg.seed), result.wall_time)
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def _merge(path: Path, new: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    if path.exists() and not new.empty:
        old = pd.read_csv(path, dtype={"step": str} if "step" in columns else None)
        old = old[~old["model"].isin(set(new["model"]))]
        new = pd.concat([old, new], ignore_index=True)
    elif path.exists():
        new = pd.read_csv(path, dtype={"step": str} if "step" in columns else None)
    return new[list(columns)] if not new.empty else new


def _md_table(df: pd.DataFrame) -> str:
    from medgen.reports import markdown_table
    return markdown_table(df).rstrip()


def _step_key(s: str) -> tuple[int, float]:
    try:
        return (1, float(s))
    except ValueError:
        return (0 if s.startswith("real") else 2, 0.0)


def render_markdown(out: Path, header: str) -> Path:
    timing_csv, curves_csv, md = out / f"{NAME}_timing.csv", out / f"{NAME}.csv", out / f"{NAME}.md"
    parts = [f"# {TITLE}", "", header, ""]
    if timing_csv.exists():
        t = pd.read_csv(timing_csv)
        parts += ["## Seconds per training step (one torch thread)", "",
                  "`compute_s`: median s / optimiser step with the data cached; `render_s`: extra s / step while "
                  "the first epoch renders the phantoms (every epoch when `cache_fits` is False); "
                  "`total_h_preset`: the preset's steps x (compute + rendering) in hours.", "",
                  _md_table(t), ""]
    if curves_csv.exists():
        c = pd.read_csv(curves_csv, dtype={"step": str})
        parts += ["## Learning curves (test subjects; step = optimiser steps of one run)", "",
                  "`train_s`: training seconds of the run up to that step (one thread, data rendering included). "
                  "`real CT`: the registered real CT segmented by the same segmenter (MRI -> CT Dice only); "
                  "`shipped (N)`: the shipped checkpoint of the plan's config (trained to N steps). "
                  "Dice is the shipped 2D CT segmenter's; 3D volumes are segmented slice by slice (sagittal), "
                  "a proxy for the unshipped 3D segmenter, so 3D Dice compares only within its own table.", ""]
        for model, sel in c.groupby("model", sort=False):
            wide = sel.pivot_table(index="step", columns="metric", values="value", aggfunc="first")
            wide = wide.loc[sorted(wide.index, key=_step_key)]
            train_s = sel.groupby("step")["train_s"].first().reindex(wide.index)
            wide.insert(0, "train_s", [f"{v:.0f}" if v > 0 else "" for v in train_s])
            parts += [f"### {model} (n_test = {int(sel['n_test'].iloc[0])})", "",
                      _md_table(wide.reset_index()), ""]
    text = "\n".join(parts)
    if md.exists() and MARKER in md.read_text():
        text += "\n" + MARKER + md.read_text().split(MARKER, 1)[1]
    md.write_text(text.rstrip() + "\n")
    return md


def header(argv: Sequence[str], seconds: float) -> str:
    import platform
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"Made by `python -m benchmark.{NAME} {' '.join(argv)}` on {platform.node() or 'this machine'} "
            f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread), "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min, load average at the end {load}.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmark.{NAME}", description=TITLE)
    p.add_argument("--list", action="store_true", help="print the model catalogue of the `cpu` plans and exit")
    p.add_argument("--timing", action="store_true", help="seconds per training step of every model")
    p.add_argument("--curves", action="store_true", help="learning curves of --models")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the CSVs")
    p.add_argument("--models", default=",".join(DEFAULT_CURVES), help="comma-separated catalogue keys")
    p.add_argument("--timing-models", default="", help="comma-separated keys to time (default: all)")
    p.add_argument("--at", default="250,500,1000,2000", help="steps at which the curves are scored")
    p.add_argument("--n-test", type=int, default=16, help="test subjects of the 2D curves")
    p.add_argument("--n-test-3d", type=int, default=8, help="test volumes of the 3D curves")
    p.add_argument("--warm", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--timing-steps", type=int, default=5, help="timed steps per model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides of the timed / curved models (a variant: its key gets them appended)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--root", default="", help="runs folder (default: a temporary folder under /tmp)")
    p.add_argument("--out", default="reports/benchmark")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    repo = Path(__file__).resolve().parents[1]
    out = Path(args.out) if Path(args.out).is_absolute() else repo / args.out
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.root) if args.root else None
    if root is None and (args.timing or args.curves):
        root = Path(tempfile.mkdtemp(prefix="lc_runs_"))
    entries = cpu_models(args.preset)
    if args.list:
        from medgen import zoo
        for e in entries:
            t = e.cfg.train
            print(f"{e.key:36s} {e.cfg.method:10s} steps {t.steps:6d} batch {t.batch_size:3d} "
                  f"threads {t.num_threads} shipped {zoo.shipped(e.cfg) is not None}")
        return 0
    if args.timing:
        keys = [k for k in args.timing_models.split(",") if k] or [e.key for e in entries]
        path = out / f"{NAME}_timing.csv"

        def save(rows: pd.DataFrame) -> None:
            _merge(path, rows, TIMING_COLUMNS).to_csv(path, index=False)

        new = run_timing(with_overrides(find(entries, keys), args.set), root, args.warm, args.timing_steps, save)
        print(new.to_string(index=False))
    if args.curves:
        at = [int(a) for a in args.at.split(",") if a]
        for e in with_overrides(find(entries, [k for k in args.models.split(",") if k]), args.set):
            try:
                new = run_curve(e, at, root, args.n_test_3d if e.kind == "3d" else args.n_test, args.progress)
            except Exception as err:  # noqa: BLE001 -- say it and go on with the next model
                log(f"curve of {e.key} FAILED: {type(err).__name__}: {err}")
                continue
            merged = _merge(out / f"{NAME}.csv", new, CURVE_COLUMNS)
            merged.to_csv(out / f"{NAME}.csv", index=False)
            print(new.pivot_table(index="step", columns="metric", values="value", aggfunc="first").to_string())
    if args.timing or args.curves:
        line = header(argv, time.perf_counter() - start)
    else:  # --render: the tables come from the CSVs, measured by earlier --timing / --curves runs
        line = (f"Rendered by `python -m benchmark.{NAME} {' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M')} "
                f"from `{NAME}_timing.csv` and `{NAME}.csv`, which earlier `--timing` / `--curves` runs measured "
                "(how: below the tables).")
    md = render_markdown(out, line)
    log(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
