"""The ``medgen`` command line: ``train | sample | evaluate | generate | reconstruct | export | upgrade | reproduce |
demo | phantoms``.

Examples
--------
::

    medgen train --preset smoke --set train.steps=100          # prints the checkpoint folder
    medgen train --preset ci --dry-run                         # the resolved config as JSON
    medgen sample --checkpoint runs/<run> --input in.png --output out.png --steps 20
    medgen sample --checkpoint runs/<run> --input d0.png ... --input d4.png --cond uca=32.5 --output out.png
    medgen evaluate --checkpoint runs/<run> --out eval.csv
    medgen evaluate --task mri_to_ct/ddim_image --preset cpu --steps 20   # the shipped model, via medgen.zoo
    medgen generate --task lung_us/prior --preset cpu --n 8 --out gen/                 # a prior's images
    medgen reconstruct --task lung_us/prior --preset cpu --operator us_linear --input lung.png --out recon/
    medgen sample --checkpoint checkpoints/mri_to_ct/ddim_image-t2w --input ct.dcm --output out.png \
        --allow-modality-mismatch                              # a CT into the MRI->CT model: refused without it
    medgen upgrade checkpoints/mri_to_ct/ddim_image-t2w        # out-of-distribution calibration, weights kept
    medgen reproduce --preset smoke --papers spine,knee
    medgen demo --preset smoke --port 7860
    medgen phantoms knee --n 8 --out phantoms/knee --control kl_grade=3
    medgen phantoms toy_shapes --n 8 --out phantoms/toy

Every user error (unknown preset, method, dataset, config key or file; an unreadable image)
ends the command with one line ``medgen: error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from medgen.cli_parser import EXIT_USAGE, PROG, SAMPLE_OPTIONS, build_parser
from medgen.commands import require_translator, sample_options, source_channels, translate_image
from medgen.config import ConfigError, RunConfig, apply_overrides, get_preset, to_json
from medgen.registry import UnknownNameError


# --------------------------------------------------------------------------------------
# Config resolution
# --------------------------------------------------------------------------------------
def resolve_preset_config(args: argparse.Namespace) -> RunConfig:
    """Preset of ``--task`` + ``--method`` + ``--set`` overrides."""
    cfg = get_preset(args.preset, task=args.task)
    _refuse_conflicts(args, {"method": ("method", getattr(args, "method", None))})
    if getattr(args, "method", None):
        cfg = replace(cfg, method=args.method)
    return apply_overrides(cfg, args.overrides)


def _section(override: str) -> str:
    return override.partition("=")[0].strip().partition(".")[0]


def resolve_model_config(args: argparse.Namespace, allowed: Sequence[str]) -> tuple[RunConfig, Callable[[], Any]]:
    """``(config to run with, loader of the model)`` for ``sample`` / ``evaluate``.

    ``--checkpoint``: the checkpoint's config; ``--set`` may only touch ``allowed`` sections.
    ``--task``: the task's preset with every ``--set`` outside ``allowed`` (these define the model,
    found by :func:`medgen.zoo.resolve`); the ``allowed`` ones and the sampling flags only change the run.
    """
    if bool(args.checkpoint) == bool(args.task):
        raise ConfigError(f"{args.command} needs exactly one of --checkpoint FOLDER or --task TASK "
                          f"(got {'both' if args.checkpoint else 'neither'})")
    if args.checkpoint:
        from medgen.checkpoint import load_translator

        model_cfg, load = None, (lambda: load_translator(args.checkpoint))
        cfg = resolve_checkpoint_config(args, allowed)
    else:
        from medgen import zoo

        model_cfg = apply_overrides(get_preset(args.preset, task=args.task),
                                    [o for o in args.overrides if _section(o) not in allowed])
        cfg = _with_sample_flags(apply_overrides(model_cfg, [o for o in args.overrides if _section(o) in allowed]),
                                 args)
        load = (lambda: zoo.resolve(model_cfg))
    return cfg, load


def resolve_checkpoint_config(args: argparse.Namespace, allowed: Sequence[str]) -> RunConfig:
    """The checkpoint's config + ``--set`` (only ``allowed`` sections) + sampling flags."""
    from medgen.checkpoint import read_config

    cfg = read_config(args.checkpoint)
    for text in args.overrides:
        if _section(text) not in allowed:
            raise ConfigError(f"'{text}': {args.command} only accepts overrides of "
                              f"{', '.join(s + '.*' for s in allowed)} (the checkpoint fixes the rest)")
    return _with_sample_flags(apply_overrides(cfg, args.overrides), args)


def _with_sample_flags(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``cfg`` with ``--sampler --steps --eta --guidance`` applied to its sample section."""
    flags = {f"sample.{key}": getattr(args, flag) for flag, key in SAMPLE_OPTIONS
             if getattr(args, flag, None) is not None}
    _refuse_conflicts(args, {f"sample.{key}": (flag, getattr(args, flag)) for flag, key in SAMPLE_OPTIONS
                             if getattr(args, flag, None) is not None})
    return apply_overrides(cfg, flags)


def _refuse_conflicts(args: argparse.Namespace, flags: dict[str, tuple[str, Any]]) -> None:
    """One line naming both when ``--<flag> X`` and ``--set <key>=Y`` give one key different values
    (``flags``: config key -> (flag name, its value or None))."""
    from medgen.config import _parse_value

    for text in getattr(args, "overrides", None) or ():
        key, _, raw = text.partition("=")
        flag, value = flags.get(key.strip(), (None, None))
        if value is not None and _parse_value(raw.strip()) != value:
            raise ConfigError(f"--{flag} {value} and --set {text.strip()} disagree: give one of them")


def validate_names(cfg: RunConfig) -> None:
    """Fail early, in one line, on an unknown method or dataset name."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.registry import DATASETS, METHODS, lookup

    lookup(METHODS, cfg.method)
    lookup(DATASETS, cfg.data.dataset)


def _print_json(obj: Any) -> None:
    """Pretty JSON on stdout."""
    print(json.dumps(obj, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    """Train (or load from the cache) and print the checkpoint folder."""
    cfg = resolve_preset_config(args)
    validate_names(cfg)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    from medgen.checkpoint import latest_checkpoint
    from medgen.train import run_dir_for, train_or_load

    train_or_load(cfg, root=args.runs, force=args.force)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        run_dir = run_dir_for(cfg, args.runs)
        print(latest_checkpoint(run_dir) or run_dir)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Translate one image file with a checkpoint."""
    cfg, load_model = resolve_model_config(args, allowed=("sample",))
    require_translator(cfg, "sample")  # a prior: one line naming generate / reconstruct
    if args.dry_run:
        print(to_json(cfg))
        return 0
    from medgen.data.io import read_sample_input, read_sample_stack, write_image

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".npy"):
        raise ValueError(f"{out.name}: cannot write '{out.suffix or '(none)'}' (use .png or .npy)")
    if not out.parent.is_dir():  # before reading, loading and sampling
        raise ConfigError(f"--output {args.output}: folder {out.parent} does not exist (create it first)")
    cond = _parse_conditions(args.cond)
    notes: list[str] = []
    channels = source_channels(cfg)
    if channels == 1 and len(args.input) == 1:
        image = read_sample_input(args.input[0], notes=notes)
    else:
        image = read_sample_stack(args.input, channels, notes=notes)
    modality = _check_input_modalities(args, cfg, notes)  # a mismatch: refused before the model loads
    translator = load_model()
    verdict = _verdict_line(translator, image, modality)
    result = translate_image(translator, image, cfg, seed=args.seed, name=Path(args.input[0]).name,
                             notes=notes, cond=cond)
    for note in notes:  # said once the translation succeeded: a failing command prints its one error line only
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(verdict, file=sys.stderr)
    write_image(out, result)
    print(out)
    return 0


def _check_input_modalities(args: argparse.Namespace, cfg: RunConfig, notes: list[str]) -> str:
    """The modality guard of ``sample`` (:func:`medgen.ood.check_modality`) on every ``--input``, before the
    model loads: a mismatch is one line naming both (unless ``--allow-modality-mismatch``); returns the
    first input's modality (``""`` unknown)."""
    from medgen import ood

    model = args.checkpoint or f"{args.task} at `{args.preset}`"
    codes = []
    for path in args.input:
        what = "input" if len(args.input) == 1 else f"input {Path(path).name}"
        code, note = ood.check_input(path, cfg, allow=args.allow_modality_mismatch, model=model, what=what)
        if note:
            notes.append(note)
        codes.append(code)
    return codes[0] if codes else ""


def _verdict_line(model: Any, image: Any, modality: str) -> str:
    """``medgen: within / outside the training distribution (score s, threshold t)`` (for stderr)."""
    from medgen import ood

    return _verdict_text(ood.assess_image(model, image, modality=modality))


def _verdict_text(verdict: Any) -> str:
    return f"{PROG}: {'warning: input ' if verdict.outside else ''}{verdict.line()}"


def _parse_conditions(items: Sequence[str]) -> dict[str, float]:
    """``--cond uca=32.5`` (repeatable) -> ``{"uca": 32.5}``; checked against the model by translate_image."""
    cond: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ConfigError(f"--cond must look like NAME=NUMBER, got '{item}'")
        if key in cond:
            raise ConfigError(f"--cond {key} given twice")
        cond[key] = number
    return cond


def _metric_names(text: str) -> tuple[str, ...]:
    """``--metrics "psnr, ssim"`` -> ``("psnr", "ssim")``."""
    metrics = tuple(m for m in re.split(r"[,\s]+", text) if m)
    if not metrics:
        raise ConfigError("--metrics names no metric")
    return metrics


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on the test split of its dataset; write the rows as CSV."""
    cfg, load_model = resolve_model_config(args, allowed=("sample", "data"))
    require_translator(cfg, "evaluate")
    if args.dry_run:
        print(to_json(cfg))
        return 0
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.commands import evaluation_frame
    from medgen.evaluate import summarize
    from medgen.registry import DATASETS, lookup

    metrics = _metric_names(args.metrics)
    translator = load_model()
    dataset = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
    rows = evaluation_frame(translator, dataset, metrics, options=sample_options(cfg), seed=args.seed,
                            batch_size=args.batch_size, baseline=not args.no_baseline)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    table = summarize(rows, by=["method"])
    print(f"{cfg.method} on {cfg.data.dataset}: test split, {len(dataset)} samples, mean and SD across "
          f"subjects, data_range 2.0 (model range [-1, 1]); per-sample rows in {out}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _note(text: str) -> None:
    print(f"{PROG}: note: {text}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    """Draw ``--n`` images from a prior into the folder ``--out``; print the folder."""
    from medgen.commands import generate_command, require_ability

    cfg, load_model = resolve_model_config(args, allowed=("sample",))
    require_ability(cfg, "generate")
    if args.dry_run:
        print(to_json(cfg))
        return 0
    print(generate_command(cfg, load_model, n=args.n, out=args.out, seed=args.seed, note=_note))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """DPS reconstruction of ``--measurement`` (or of one simulated from ``--input``) into ``--out``;
    print the folder and, with ``--input``, the mean's PSNR / SSIM."""
    from medgen.commands import reconstruct_command, require_ability

    cfg, load_model = resolve_model_config(args, allowed=("sample",))
    require_ability(cfg, "reconstruct")
    if args.dry_run:
        print(to_json(cfg))
        return 0
    folder, metrics = reconstruct_command(
        cfg, load_model, operator=args.operator, out=args.out, measurement=args.measurement, image=args.input,
        noise=args.noise, scale=args.scale, samples=args.samples, seed=args.seed, sampler=args.sampler, eta=args.eta,
        note=_note, allow_modality_mismatch=args.allow_modality_mismatch,
        model_name=args.checkpoint or f"{args.task} at `{args.preset}`",
        verdict=lambda v: print(_verdict_text(v), file=sys.stderr))
    print(folder)
    if metrics:
        print(f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} (mean of {args.samples} samples vs --input)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the sampling weights of a checkpoint (fp16 by default), verified on test images."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.checkpoint import export_checkpoint, read_config, resolve_checkpoint
    from medgen.data.batch import collate
    from medgen.registry import DATASETS, lookup

    if args.verify < 0:
        raise ValueError(f"--verify must be >= 0, got {args.verify}")
    source, meta = None, None
    if args.verify:
        cfg = read_config(resolve_checkpoint(args.checkpoint))
        dataset = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
        batch = collate([dataset[i] for i in range(min(args.verify, len(dataset)))])
        source, meta = batch.source, batch.meta  # meta: the labels a conditional model takes
    out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, verify_source=source, verify_meta=meta)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"exported {args.checkpoint} -> {out} ({args.dtype}, {size:.1f} MiB)")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Add the out-of-distribution calibration (:func:`medgen.ood.upgrade`) to each checkpoint, in place."""
    from medgen import ood

    options = {k: v for k, v in (("space", args.space), ("percentile", args.percentile)) if v is not None}
    for folder in args.checkpoints:
        manifest = ood.upgrade(folder, **options)
        entry = manifest[ood.MANIFEST_KEY]
        hashes = manifest.get("weights_sha256")
        print(f"upgraded {folder}: out-of-distribution threshold {entry['threshold']:.4g} ({entry['space']} "
              f"features, {entry['percentile']:g}th percentile of {entry['n_heldout']} held-out training images; "
              f"{entry['n_reference']} reference images in {entry['file']})"
              + (f"; weight sha256 recorded for {', '.join(sorted(hashes))}" if isinstance(hashes, dict) else ""))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the notebooks through papermill; 1 if any notebook failed."""
    from medgen.reports import repo_root
    from medgen.reproduce import ReproduceError, reproduce, select_notebooks

    get_preset(args.preset)  # unknown preset -> one-line error, not one failure per notebook
    if args.dry_run:
        notebooks = select_notebooks(repo_root() / "notebooks", args.papers)
        _print_json({"preset": args.preset, "kernel": args.kernel, "retrain": args.retrain,
                     "notebooks": [p.name for p in notebooks], "reports": str(repo_root() / "reports")})
        return 0
    try:
        reproduce(args.preset, args.papers, kernel=args.kernel, retrain=args.retrain)
    except ReproduceError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def load_demo_app(preset: str, runs: str | None = None) -> Any:
    """``demos/app.py``'s ``build_app(preset=..., runs_root=...)`` from the repository root."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no outside lookups
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from medgen.reports import repo_root

    root = repo_root()
    if not (root / "demos" / "app.py").is_file():
        raise FileNotFoundError(f"demo app {root / 'demos' / 'app.py'} not found")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from demos.app import build_app

    return build_app(preset=preset) if runs is None else build_app(preset=preset, runs_root=runs)


def cmd_demo(args: argparse.Namespace) -> int:
    """Launch the Gradio hub on ``--host:--port`` (local only by default, no analytics)."""
    if args.dry_run:
        _print_json({"preset": args.preset, "url": f"http://{args.host}:{args.port}"})
        return 0
    get_preset(args.preset)  # unknown preset -> one-line error before gradio loads
    app = load_demo_app(args.preset, args.runs)
    print(f"medgen demo (preset {args.preset}) at http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
    from demos.app import MAX_FILE_SIZE  # importable: load_demo_app put the repo root on sys.path

    app.launch(server_name=args.host, server_port=args.port, share=False, max_file_size=MAX_FILE_SIZE)
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write ``--n`` subjects of a phantom (or pairs of a registered dataset) with a ``manifest.csv``."""
    from medgen.registry import DATASETS, PHANTOMS, lookup

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.anatomy and args.dataset and args.anatomy != args.dataset:
        raise ConfigError(f"anatomy '{args.anatomy}' and --dataset '{args.dataset}' disagree: give one")
    import medgen.data  # noqa: F401 -- fills DATASETS and PHANTOMS (after the cheap argument checks)
    name = args.anatomy or args.dataset
    if name in PHANTOMS or (name and name not in DATASETS and not args.dataset):
        return _write_phantom(args, lookup(PHANTOMS, name))
    if args.size or args.control:
        raise ConfigError(f"--size and --control apply to phantoms ({', '.join(sorted(PHANTOMS))}), not '{name}'")
    cfg = resolve_preset_config(args)
    name = name or cfg.data.dataset
    size_key = "n_train" if args.split == "train" else "n_test"
    data = replace(cfg.data, dataset=name, **{size_key: max(args.n, getattr(cfg.data, size_key))})
    cfg = replace(cfg, data=data)
    build = lookup(DATASETS, name)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    from medgen.data.writers import write_item_dataset

    _, count = write_item_dataset(build(cfg.data, args.split), args.out, args.n)
    print(f"wrote {count} {name} pairs ({args.split} split) to {Path(args.out)}/ with manifest.csv")
    return 0


def _parse_size(text: str) -> tuple[int, ...]:
    """``"64x32"`` -> ``(64, 32)``; ``"64x64x16"`` -> ``(64, 64, 16)``."""
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) not in (2, 3):
        raise ConfigError(f"--size must look like HxW or HxWxD (e.g. 64x32), got '{text}'")
    return parts


def _parse_controls(items: Sequence[str]) -> dict[str, float]:
    """``["kl_grade=3"]`` -> ``{"kl_grade": 3.0}``."""
    controls = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            controls[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--control must look like NAME=NUMBER, got '{item}'")
    return controls


def _write_phantom(args: argparse.Namespace, spec: Any) -> int:
    """Render ``--n`` subjects of phantom ``spec`` into ``--out`` in the real-data format."""
    from medgen.data.phantoms.base import Sizes
    from medgen.data.writers import subject_numbers, write_phantom_dataset

    if args.card:
        print(spec.card.strip())
        return 0
    sizes = Sizes(*_parse_size(args.size)) if args.size else spec.sizes_for(args.preset)
    controls = _parse_controls(args.control)
    spec.check_controls(controls)
    numbers = subject_numbers(args.split, args.n)
    if args.dry_run:
        _print_json({"phantom": spec.name, "n": args.n, "split": args.split, "seed": args.seed,
                     "sizes": dataclasses.asdict(sizes),
                     "controls": controls, "out": args.out})
        return 0
    manifest = write_phantom_dataset(spec, numbers, args.out, seed=args.seed, sizes=sizes, controls=controls,
                                     overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"wrote {args.n} {spec.name} subjects ({args.split} split, seed {args.seed}, "
          f"{sizes.height}x{sizes.width}{f'x{sizes.depth}' if sizes.depth else ''}) to {manifest}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "generate": cmd_generate,
            "reconstruct": cmd_reconstruct, "upgrade": cmd_upgrade,
            "reproduce": cmd_reproduce, "demo": cmd_demo, "phantoms": cmd_phantoms, "export": cmd_export}


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def _error_message(exc: BaseException) -> str:
    """One line describing a user error."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def _weight_check(skip: bool) -> Iterator[None]:
    """``--no-verify-weights``: ``$MEDGEN_NO_VERIFY_WEIGHTS=1`` for the command (every checkpoint it loads,
    parents included), restored afterwards."""
    if not skip:
        yield
        return
    from medgen.checkpoint import NO_VERIFY_ENV  # torch: only for the commands that load weights
    from medgen.utils import set_env

    with set_env(NO_VERIFY_ENV, "1"):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medgen`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _weight_check(getattr(args, "no_verify_weights", False)):
            return COMMANDS[args.command](args)
    except (ConfigError, UnknownNameError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, ValueError) as exc:
        print(f"{PROG}: error: {_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
