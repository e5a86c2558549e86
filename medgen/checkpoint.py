"""Checkpoints: safetensors weights + config JSON + run manifest, written atomically.

Layout of a run folder (``fit(..., out_dir=run)``)::

    run/
      latest -> checkpoints/step_00000300      # symlink (a text file where symlinks fail)
      checkpoints/step_00000300/
        weights.safetensors   the raw model state_dict
        ema.safetensors       the EMA weights (absent when train.ema_decay == 0)
        optim.pt              optimiser / scheduler / EMA counter / RNG state, step, wall time
        config.json           the RunConfig (medgen.config.to_json): enough to rebuild the method
        manifest.json         git SHA, config hash, split hash, seed, versions, wall time, step,
                              weights_sha256 {file name: sha256} of the weight files

``optim.pt`` is the file ARCHITECTURE.md names for the training state. Loading checks each weight
file against ``weights_sha256`` (a damaged or edited file is a one-line error; ``verify=False`` or
``$MEDGEN_NO_VERIFY_WEIGHTS=1`` loads it anyway; a manifest without hashes, from before they were
recorded, is not checked; :func:`add_weight_hashes` records them for such a checkpoint).

Crash safety: a checkpoint is written into a hidden temporary folder beside its final
name, every file and the folder are ``fsync``-ed, the folder is renamed to its final name
and only then is ``latest`` re-pointed (a new symlink renamed over the old one). A kill at
any moment therefore leaves ``latest`` on a complete checkpoint; half-written temporary
folders are removed by the next save. Weights use safetensors (``save_model`` /
``load_model``, which also handle tied tensors); no library writes a folder atomically or
checks a checkpoint against the model built from its config, hence the code here.

>>> method = load_translator("runs/quickstart/0123abcd4567")   # a run folder or a checkpoint
>>> pred = method.translate(source)                          # EMA weights, eval mode
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from medgen import registry
from medgen.config import ConfigError, RunConfig, config_hash, from_json, to_dict, to_json
from medgen.utils import atomic_write_text, fsync_dir, fsync_file, git_sha, package_versions, sha256_file

if TYPE_CHECKING:  # methods may import this module to load pretrained parts
    from medgen.methods.base import Method

WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "optim.pt"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
LATEST = "latest"
CHECKPOINTS_DIR = "checkpoints"
HASHES = "weights_sha256"  # manifest key: {weight file name: sha256 hex digest}, checked on load
NO_VERIFY_ENV = "MEDGEN_NO_VERIFY_WEIGHTS"  # "1": load weights without checking them against the manifest
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line naming the file and the problem."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint folder or one of its files does not exist."""


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint taken after ``step`` optimiser steps."""
    return f"step_{step:08d}"


def make_manifest(config: RunConfig | None, *, step: int, total_steps: int, seed: int,
                  wall_time: float = 0.0, split_hash: str | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record saved as ``manifest.json`` (``extra`` keys are added verbatim)."""
    manifest = {
        "step": int(step),
        "total_steps": int(total_steps),
        "complete": int(step) >= int(total_steps),
        "seed": int(seed),
        "method": None if config is None else config.method,
        "config_hash": None if config is None else config_hash(config),
        "split_hash": split_hash,
        "git_sha": git_sha(),
        "versions": package_versions(),
        "wall_time_s": round(float(wall_time), 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None and config.parents:  # a staged method: the parent runs it was trained on
        manifest["parents"] = {name: config_hash(parent) for name, parent in sorted(config.parents.items())}
    manifest.update(extra)
    return manifest


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model: nn.Module, state: dict[str, Any],
                    manifest: dict[str, Any], config: RunConfig | None = None,
                    ema_model: nn.Module | None = None, keep_last: int | None = 2) -> Path:
    """Write ``run_dir/checkpoints/step_<step>/`` atomically and point ``run_dir/latest`` at it.

    ``state`` (optimiser states, counters, RNG) goes to ``optim.pt``. The newest ``keep_last``
    checkpoints are kept (``None``: all); the one ``latest`` points at is never removed.
    Returns the checkpoint folder.
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; use the usual permissions
        _write_files(tmp, model=model, ema_model=ema_model, state=state, config=config, manifest=manifest)
        _replace_orphan(run_dir, final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    _point_latest(run_dir, final)
    if keep_last is not None:
        _prune(run_dir, keep_last)
    return final


def _write_files(folder: Path, *, model: nn.Module, ema_model: nn.Module | None, state: dict[str, Any],
                 config: RunConfig | None, manifest: dict[str, Any]) -> None:
    """Write every checkpoint file into ``folder`` and fsync them and the folder."""
    save_model(model, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if ema_model is not None:
        save_model(ema_model, str(folder / EMA_FILE), metadata={"format": "pt"})
    torch.save(state, folder / STATE_FILE)
    if config is not None:
        (folder / CONFIG_FILE).write_text(to_json(config) + "\n")
    manifest = {**manifest, HASHES: weight_hashes(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~_umask())
        fsync_file(path)
    fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_orphan(run_dir: Path, final: Path) -> None:
    """Remove ``final`` if a crash left it behind un-pointed-to; refuse to overwrite ``latest``."""
    if not final.exists():
        return
    if _latest_target(run_dir) == final.resolve():
        raise CheckpointError(f"{final}: checkpoint already exists and is 'latest'; refusing to overwrite it")
    shutil.rmtree(final)


def _point_latest(run_dir: Path, final: Path) -> None:
    """Atomically re-point ``run_dir/latest`` at ``final`` (symlink swap; text file fallback)."""
    target = os.path.relpath(final, run_dir)
    link = run_dir / LATEST
    tmp_link = run_dir / f".{LATEST}.{uuid.uuid4().hex}.tmp"
    try:
        os.symlink(target, tmp_link, target_is_directory=True)
        os.replace(tmp_link, link)
    except (OSError, NotImplementedError):
        tmp_link.unlink(missing_ok=True)
        atomic_write_text(link, target + "\n")
    fsync_dir(run_dir)


def _remove_stale_temporaries(root: Path) -> None:
    """Delete half-written ``.tmp-*`` folders left by an interrupted save."""
    for path in root.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    latest = _latest_target(run_dir)
    old = list_checkpoints(run_dir)[: -keep_last] if keep_last > 0 else list_checkpoints(run_dir)
    for path in old:
        if path.resolve() != latest:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Finding and reading
# --------------------------------------------------------------------------------------
def _latest_target(run_dir: Path) -> Path | None:
    """Where ``run_dir/latest`` points (resolved), or None without a ``latest``."""
    link = run_dir / LATEST
    if link.is_symlink():
        return (run_dir / os.readlink(link)).resolve()
    if link.is_file():
        return (run_dir / link.read_text().strip()).resolve()
    return None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``run_dir/latest`` names, or None when the run has none yet."""
    run_dir = Path(run_dir)
    target = _latest_target(run_dir)
    if target is None:
        return None
    if not target.is_dir():
        raise CheckpointNotFoundError(f"{run_dir / LATEST}: points at missing checkpoint folder {target}")
    return target


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from either itself or a run folder (via its ``latest``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint folder")
    if (path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointNotFoundError(f"{path}: not a checkpoint folder (no {CONFIG_FILE}) "
                                      f"and no '{LATEST}' checkpoint")
    return latest


def _require(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: missing checkpoint file")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_require(path).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: corrupt JSON (not UTF-8 text)") from None


def read_config(checkpoint: str | os.PathLike) -> RunConfig:
    """The RunConfig saved in a checkpoint (or run) folder."""
    path = resolve_checkpoint(checkpoint) / CONFIG_FILE
    _read_json(path)  # one-line error for missing / corrupt files
    try:
        return from_json(path.read_text())
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid config ({err})") from None


def read_manifest(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The manifest dict saved in a checkpoint (or run) folder."""
    path = resolve_checkpoint(checkpoint) / MANIFEST_FILE
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: corrupt manifest (expected a JSON object)")
    return data


def load_training_state(checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The ``optim.pt`` dict (optimisers, schedulers, step, RNG) of a checkpoint."""
    path = _require(resolve_checkpoint(checkpoint) / STATE_FILE)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{path}: corrupt training state ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (reads no tensor data)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:  # SafetensorError, OSError, ... for torn or foreign files
        raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(err)})") from None


def weight_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files (``weights.safetensors``, ``ema.safetensors``) in ``folder``:
    the manifest's ``weights_sha256``."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in (WEIGHTS_FILE, EMA_FILE) if (folder / name).is_file()}


def verify_by_default() -> bool:
    """Whether weights are checked against the manifest when the caller does not say: yes, unless
    ``$MEDGEN_NO_VERIFY_WEIGHTS`` is set to ``1`` / ``true`` / ``yes``."""
    return os.environ.get(NO_VERIFY_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def verify_weight_file(path: str | os.PathLike) -> bool:
    """Check ``path`` against the sha256 its folder's ``manifest.json`` records (``weights_sha256``).

    One-line :class:`CheckpointError` naming the file on a mismatch (a damaged or edited file).
    Returns False (no check) when the manifest records no hash for it -- a checkpoint written
    before hashes were recorded, or a folder without a manifest -- and True when it matched.
    """
    path = Path(path)
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.is_file():
        return False
    manifest = read_manifest(path.parent)
    recorded = manifest.get(HASHES)
    if not isinstance(recorded, dict) or path.name not in recorded:
        return False
    actual = sha256_file(path)
    if actual != recorded[path.name]:
        raise CheckpointError(f"{path}: sha256 {actual[:12]}... does not match the manifest "
                              f"({str(recorded[path.name])[:12]}... in {manifest_path.name}); the file is damaged "
                              f"or was edited; pass verify=False / --no-verify-weights to load it anyway")
    return True


def add_weight_hashes(folder: str | os.PathLike, *, force: bool = False) -> dict[str, str]:
    """Record the sha256 of a checkpoint's weight files in its ``manifest.json`` (atomically rewritten);
    for checkpoints written before hashes were recorded. The weight files are not touched.

    ``folder``: a checkpoint (or run) folder. Each weight file must parse as safetensors (a torn
    file is not sealed). Hashes already recorded must match the files (else one-line
    :class:`CheckpointError`, so damage is never sealed in) unless ``force=True`` (weights edited
    on purpose). Returns ``{file name: sha256}``; a manifest that already holds exactly these is
    left as it is.
    """
    ckpt = resolve_checkpoint(folder)
    manifest = read_manifest(ckpt)
    hashes = weight_hashes(ckpt)
    if not hashes:
        raise CheckpointNotFoundError(f"{ckpt}: no {WEIGHTS_FILE} or {EMA_FILE} to hash")
    for name in hashes:
        _file_shapes(ckpt / name)  # one-line error for a torn or foreign file
    old = manifest.get(HASHES)
    if isinstance(old, dict) and old == hashes:
        return hashes
    if isinstance(old, dict) and not force:
        for name, digest in hashes.items():
            if name in old and old[name] != digest:
                raise CheckpointError(f"{ckpt / name}: sha256 {digest[:12]}... does not match the manifest "
                                      f"({str(old[name])[:12]}...); refusing to record the new hash "
                                      f"(force=True if the weights were edited on purpose)")
    manifest[HASHES] = hashes
    path = ckpt / MANIFEST_FILE
    mode = path.stat().st_mode & 0o777
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(path, mode)  # the temporary file was 0600
    return hashes


def load_weights(checkpoint: str | os.PathLike, module: nn.Module, *, ema: bool = True,
                 verify: bool | None = None) -> Path:
    """Load ``ema.safetensors`` (or ``weights.safetensors``) into ``module``, checking every tensor.

    Raises one-line :class:`CheckpointError` naming the file and the first tensor whose shape
    differs, or the missing / unexpected tensor names. ``verify`` (default: yes unless
    ``$MEDGEN_NO_VERIFY_WEIGHTS=1``): the file's sha256 must match the manifest's
    ``weights_sha256`` (:func:`verify_weight_file`; a manifest without hashes is not checked).
    Returns the file that was loaded.
    """
    path = _require(resolve_checkpoint(checkpoint) / (EMA_FILE if ema else WEIGHTS_FILE))
    shapes = _file_shapes(path)  # a torn / foreign file: "corrupt safetensors" before the hash
    if verify_by_default() if verify is None else verify:
        verify_weight_file(path)
    for name, tensor in module.state_dict().items():
        if name in shapes and shapes[name] != tuple(tensor.shape):
            raise CheckpointError(f"{path}: tensor '{name}' has shape {list(shapes[name])} in the checkpoint "
                                  f"but {list(tensor.shape)} in the model built from its config")
    device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load weights ({_first_line(err)})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match the model built from its config "
                              f"(missing: {_names(missing)}; unexpected: {_names(unexpected)})")
    return path


def _names(names: Any, limit: int = 4) -> str:
    names = sorted(names)
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """``"key: a != b"`` for every dotted config key whose value differs."""
    flat_a, flat_b = _flatten(to_dict(a)), _flatten(to_dict(b))
    keys = sorted(set(flat_a) | set(flat_b))
    return [f"{k}: {flat_a.get(k)!r} != {flat_b.get(k)!r}" for k in keys if flat_a.get(k) != flat_b.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_config(checkpoint: str | os.PathLike, expected: RunConfig) -> RunConfig:
    """The checkpoint's config; a one-line error naming the differing keys if it is not ``expected``."""
    saved = read_config(checkpoint)
    if config_hash(saved) != config_hash(expected):
        diff = config_diff(saved, expected)
        path = resolve_checkpoint(checkpoint) / CONFIG_FILE
        raise CheckpointError(f"{path}: checkpoint was trained with another config than asked "
                              f"(saved vs asked: {'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''})")
    return saved


# --------------------------------------------------------------------------------------
# Translators
# --------------------------------------------------------------------------------------
def load_translator(path: str | os.PathLike, *, device: str | torch.device = "cpu", ema: bool = True,
                    config: RunConfig | None = None, parents: "dict[str, Method] | None" = None,
                    runs: str | os.PathLike | None = None, verify: bool | None = None) -> "Method":
    """Rebuild the method a checkpoint names, load its (EMA) weights, and return it in eval mode.

    ``path`` is a checkpoint folder or a run folder (its ``latest`` checkpoint is used).
    ``ema=False`` loads the raw weights; a run trained with ``ema_decay=0`` has only those.
    ``config``, when given, must equal the saved config (else a one-line error names the
    differing keys). Errors are :class:`CheckpointError` naming the file at fault.
    ``verify`` (default: yes unless ``$MEDGEN_NO_VERIFY_WEIGHTS=1``): the weight file's sha256 must
    match the manifest's ``weights_sha256`` (damaged or edited weights are refused in one line;
    ``verify=False`` loads weights edited on purpose; parents found by the model finder follow
    the environment variable).

    A staged method (its saved config names ``parents``) gets them attached, frozen: ``parents``
    when given (already resolved), else :func:`medgen.zoo.resolve_parents` finds each one
    (shipped, cached under ``runs`` / ``$MEDGEN_RUNS`` / ``runs/``, or trained); one that cannot
    be had is a one-line :class:`~medgen.methods.base.ParentError` naming it.
    """
    ckpt = resolve_checkpoint(path)
    cfg = check_config(ckpt, config) if config is not None else read_config(ckpt)
    # Here, not at the top: reading or exporting a config must not import every method.
    import medgen.methods  # noqa: F401 -- fills METHODS

    try:
        factory = registry.lookup(registry.METHODS, cfg.method)
    except registry.UnknownNameError as err:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: {err}") from None
    staged = bool(cfg.parents) or bool(getattr(factory, "parent_names", ()))
    if staged and parents is None:
        from medgen.zoo import resolve_parents

        parents = resolve_parents(cfg, runs=runs)
    method = factory(cfg).to(device)
    load_weights(ckpt, method, ema=ema and cfg.train.ema_decay > 0, verify=verify)
    if staged:
        method.attach_parents(parents)
    method.checkpoint_folder = ckpt  # where medgen.ood finds the out-of-distribution calibration
    return method.eval()


# --------------------------------------------------------------------------------------
# Export (shippable checkpoints)
# --------------------------------------------------------------------------------------
EXPORT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _output_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of ``b`` against ``a`` in model range (data range 2); ``inf`` if equal."""
    mse = float((a.double() - b.double()).square().mean())
    return float("inf") if mse == 0 else 10.0 * float(torch.log10(torch.tensor(4.0 / mse)))


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "float16",
                      verify_source: torch.Tensor | None = None, min_psnr_db: float = 40.0,
                      seed: int = 0, verify_meta: dict[str, Any] | None = None,
                      verify_weights: bool | None = None) -> Path:
    """A slim, shippable copy of a trained checkpoint: sampling weights only, cast to ``dtype``.

    Writes ``dst/`` (atomically: a temporary folder renamed) with the weights the checkpoint
    samples with (EMA when the run has it, saved under that file name so that
    :func:`load_translator` picks them as usual), ``config.json`` unchanged (the export loads
    with ``config=`` the preset it was trained from), and ``manifest.json``: the training
    manifest plus ``export = {dtype, source, weights, output_psnr_db}``. Optimiser state is
    dropped. ``verify_source`` ``[B, C_s, *S]``: translate it with the original and the
    exported weights (same seed) and refuse the export (one-line :class:`CheckpointError`)
    if the outputs differ by less than ``min_psnr_db`` PSNR -- "fp16 where it keeps the
    metrics"; export in float32 then. ``verify_meta``: the labels of ``verify_source``'s items
    (a collated ``Batch.meta``), where a method with per-sample conditions takes them from.
    The manifest's ``weights_sha256`` records the exported weight file (what :func:`load_translator`
    checks); ``verify_weights``: check the source's weights against its manifest (default: yes
    unless ``$MEDGEN_NO_VERIFY_WEIGHTS=1``; ``False`` exports weights edited on purpose).
    """
    if dtype not in EXPORT_DTYPES:
        raise CheckpointError(f"export: unknown dtype '{dtype}' (choose from {', '.join(EXPORT_DTYPES)})")
    ckpt, dst = resolve_checkpoint(src), Path(dst)
    cfg = read_config(ckpt)
    use_ema = cfg.train.ema_decay > 0
    method = load_translator(ckpt, ema=use_ema, verify=verify_weights)
    slim = copy_module_as(method, EXPORT_DTYPES[dtype])
    manifest = {**read_manifest(ckpt), "export": {"dtype": dtype, "source": str(ckpt),
                                                  "weights": "ema" if use_ema else "raw"}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".tmp-{dst.name}-"))
    try:
        save_model(slim, str(tmp / (EMA_FILE if use_ema else WEIGHTS_FILE)), metadata={"format": "pt"})
        manifest[HASHES] = weight_hashes(tmp)  # the exported file only (not the source's two)
        (tmp / CONFIG_FILE).write_text(to_json(cfg) + "\n")
        if verify_source is not None:
            from medgen.data.batch import Batch

            cond = method.batch_conditions(Batch(verify_source, meta=dict(verify_meta or {})))
            psnr = _verify_export(method, tmp, verify_source, seed, cond)
            manifest["export"]["output_psnr_db"] = psnr
            if psnr < min_psnr_db:
                raise CheckpointError(f"export: {dtype} weights change the output too much ({psnr:.1f} dB < "
                                      f"{min_psnr_db:g} dB against the original); export in float32")
        manifest["ood"] = _ood_calibration(tmp, cfg, ckpt)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~_umask())
            fsync_file(path)
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dst.parent)
    return dst


def _ood_calibration(folder: Path, cfg: RunConfig, source: Path) -> dict[str, Any]:
    """The out-of-distribution calibration of an export (:func:`medgen.ood.write_calibration`: ``ood.safetensors``
    in ``folder``, the manifest's ``"ood"`` entry; copied from ``source`` when that checkpoint has one);
    training data that cannot be read is warned about and recorded as ``{"error": ...}`` (the export
    still happens; the model's outputs then say "not assessed")."""
    import warnings

    from medgen import ood

    try:
        return ood.write_calibration(folder, cfg, source=source)
    except (OSError, ValueError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        warnings.warn(f"export: no out-of-distribution calibration ({text}); 'medgen upgrade' can add it later",
                      stacklevel=3)
        return {"error": text}


def copy_module_as(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``module`` with every floating parameter and buffer cast to ``dtype``."""
    import copy

    return copy.deepcopy(module).to(dtype=dtype)


def _verify_export(original: "Method", folder: Path, source: torch.Tensor, seed: int,
                   cond: dict[str, torch.Tensor] | None = None) -> float:
    """PSNR (dB) between the original's and the exported weights' outputs on ``source`` (and ``cond``), same seed."""
    exported = load_translator(folder)
    with torch.no_grad():
        a = original.outputs_for(source, generator=torch.Generator().manual_seed(seed), cond=cond)
        b = exported.outputs_for(source, generator=torch.Generator().manual_seed(seed), cond=cond)
    return round(_output_psnr(a, b), 2)
