"""The modality guard: the input's DICOM Modality (or a data set's phantom / manifest unit) against the
modality a checkpoint was trained on; a mismatch is one line naming both unless overridden."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medgen.ood.common import _FAMILY, _UNKNOWN, _US_KEYS, OVERRIDE_FLAG, ModalityMismatchError

if TYPE_CHECKING:  # torch / numpy load with the first guard, not with the CLI
    from medgen.config import DataConfig, RunConfig


def modality_code(key: str, modality: Any = None) -> str:
    """DICOM Modality of an image key and its :class:`~medgen.data.phantoms.base.Modality` (unit):
    ``HU`` -> ``CT``; MRI units / keys (``t1w``, ``t2w``, ``mri`` ...) -> ``MR``; ultrasound -> ``US``;
    film density / ``xray`` -> ``DX``; anything else (``[0,1]``, air fraction, toy) -> ``""``."""
    from medgen.data.datasets.common import is_mri

    key = key.split("[")[0].strip().lower()
    unit = str(getattr(modality, "unit", "") or "").strip()
    if unit.upper() == "HU":
        return "CT"
    if is_mri(key, modality):
        return "MR"
    if "ultrasound" in unit.lower() or key in _US_KEYS or key.startswith("us_"):
        return "US"
    if "film density" in unit.lower() or key in ("xray", "x-ray", "radiograph", "cr", "dx"):
        return "DX"
    return ""


def _keys_modality(data: "DataConfig", keys: Sequence[str]) -> str:
    """``"MR"`` / ``"CT"`` / ... of ``keys`` of ``data`` (several distinct codes joined by ``/``)."""
    import medgen.data  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS

    if not (data.phantom or data.manifest):
        return ""                                      # toy data: no modality
    if data.phantom:
        spec = PHANTOMS.get(data.phantom)
        table = getattr(spec, "modalities", {}) if spec is not None else {}
        mods = [table.get(k.split("[")[0].strip()) for k in keys]
    elif data.manifest:
        try:
            from medgen.data.manifest import read_manifest

            table = read_manifest(data.manifest).modalities
        except Exception:  # noqa: BLE001 -- an unreadable manifest: no modality information
            table = {}
        mods = [table.get(k.split("[")[0].strip()) for k in keys]
    codes = [modality_code(k, m) if m is not None else "" for k, m in zip(keys, mods)]
    return "/".join(dict.fromkeys(c for c in codes if c)) if all(codes) else ""


def _models_images(cfg: "RunConfig") -> str:
    """``"target"`` for a generative prior (a method with ``generate``: it models the target, else
    the source image), else ``"source"``."""
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.registry import METHODS

    prior = hasattr(METHODS.get(cfg.method), "generate")
    return "target" if prior and cfg.data.target.strip() else "source"


def _input_keys(cfg: "RunConfig") -> list[str]:
    text = cfg.data.target if _models_images(cfg) == "target" else cfg.data.source
    return [k.strip() for k in text.split(",") if k.strip()]


_TRAINED: dict[str, tuple[str, str]] = {}   # config hash -> trained_modality (a manifest is read once)


def trained_modality(cfg: "RunConfig") -> tuple[str, str]:
    """``(code, keys)`` of the images the checkpoint's model takes: e.g. ``("MR", "t2w")``,
    ``("CT", "ct")`` (the lung prior), ``("", "source")`` (toy data: no modality)."""
    from medgen.config import config_hash

    key = config_hash(cfg)
    if key not in _TRAINED:
        keys = _input_keys(cfg)
        _TRAINED[key] = (_keys_modality(cfg.data, keys), ",".join(keys))
    return _TRAINED[key]


def data_modality(data: "DataConfig", keys: Sequence[str] | None = None) -> str:
    """DICOM Modality code of a data set's source images (its phantom's or manifest's unit); ``""`` unknown."""
    keys = list(keys) if keys is not None else [k.strip() for k in data.source.split(",") if k.strip()]
    return _keys_modality(data, keys)


def input_modality(path: str | os.PathLike) -> tuple[str, str]:
    """``(Modality, how)`` of an input file: a DICOM file's (or a DICOM folder's first file's)
    ``Modality`` tag, upper case, with ``how = "DICOM Modality"``; ``("", "a .png file without
    modality information")`` for anything else. Reads the header only."""
    from medgen.data.io import DICOM_SUFFIXES

    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR") if path.is_dir() else [path]
    for f in files[:1]:
        dicom = f.suffix.lower() in DICOM_SUFFIXES or _has_dicm_marker(f)
        if dicom:
            try:
                import warnings

                import pydicom

                with warnings.catch_warnings():   # pydicom's notes on odd headers: the image reader says them
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
                return str(ds.get("Modality", "") or "").strip().upper(), "DICOM Modality"
            except Exception:  # noqa: BLE001 -- the image reader says what is wrong with the file
                return "", f"{f.name}: unreadable DICOM header"
    kind = "folder" if path.is_dir() else (f"{''.join(path.suffixes[-2:]).lower() or 'extension-less'} file")
    return "", f"a {kind} without modality information"


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _family(code: str) -> str:
    return _FAMILY.get(code, code)


def check_modality(modality: str, cfg: "RunConfig", *, allow: bool = False, how: str = "DICOM Modality",
                   model: str | None = None, override: str = OVERRIDE_FLAG, what: str = "input",
                   hint: str | None = None) -> str | None:
    """Refuse an input whose ``modality`` differs from the one ``cfg``'s model was trained on.

    ``modality``: the input's DICOM Modality code (``""`` / ``OT``: unknown); ``how``: where it
    came from; ``model``: how to name the checkpoint (default ``cfg.name``); ``override``: how
    the user overrides (a CLI flag, a keyword). Raises one-line :class:`ModalityMismatchError`
    ``input is CT (DICOM Modality) but <model> was trained on MR (t2w); pass <override> to
    translate anyway`` (``hint``: another ending, e.g. a demo's checkbox); with ``allow=True``
    returns that fact as a note instead. Returns a note
    for an input without modality information or a checkpoint trained on data without one,
    None when they agree.
    """
    trained, keys = trained_modality(cfg)
    modality = (modality or "").strip().upper()
    name = model or cfg.name
    if not trained:
        return None if modality in _UNKNOWN else (f"{what} is {modality} ({how}); {name} was trained on data without "
                                                  "a modality, so only the out-of-distribution score checks it")
    if modality in _UNKNOWN:
        got = f"{modality}, no acquisition modality" if modality else how
        return (f"{what} modality unknown ({got}); {name} was trained on {trained} ({keys}): only the "
                "out-of-distribution score checks it")
    if _family(modality) in {_family(c) for c in trained.split("/")}:
        return None
    line = f"{what} is {modality} ({how}) but {name} was trained on {trained} ({keys})"
    if allow:
        return f"modality mismatch allowed: {line}"
    raise ModalityMismatchError(f"{line}; {hint or f'pass {override} to translate anyway'}")




def check_input(path: str | os.PathLike, cfg: "RunConfig", *, allow: bool = False, model: str | None = None,
                override: str = OVERRIDE_FLAG, what: str = "input", hint: str | None = None) -> tuple[str, str | None]:
    """The modality guard on one input file: ``(its Modality code, note or None)``.

    :func:`input_modality` of ``path`` checked by :func:`check_modality` against ``cfg``: a mismatch
    is one :class:`ModalityMismatchError` line naming both and ``override`` (unless ``allow``).
    Used by ``medgen sample`` / ``reconstruct`` before the model loads and by the demos on upload."""
    code, how = input_modality(path)
    return code, check_modality(code, cfg, allow=allow, how=how, model=model, override=override, what=what,
                                hint=hint)
