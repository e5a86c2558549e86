"""``segmenter``: a CT vertebra / subregion segmentation network -- the spine paper's downstream measurer.

The MRI->CT spine paper (mri_to_ct_spine_ddim.txt, "Downstream task: Segmentation") scores a
translation by running a *publicly available CT segmentation algorithm* (Anduin / VerSe,
refs. 3-4) on the synthesized CT and comparing its vertebra masks with the ground truth
(Tables 2-3). That algorithm is not available offline, so medgen trains its own stand-in on
phantom CTs with their label maps: this method. Wherever its Dice appears, say that it is
this stand-in, not the paper's algorithm (:data:`MEASURER_NOTE`). Its Dice on *real* phantom
CTs is the ceiling a synthesized CT can reach (:func:`medgen.experiments.spine_dice.ceiling`;
~0.97 at 64 px with the ``cpu`` preset).

Task
----
Input: CT ``[B, 1, *S]`` in model range (the phantom's ``ct`` map, ``HU / 1000`` clipped to
[-1, 1], i.e. exactly what the translators output), 2D ``S = (H, W)`` or 3D ``S = (D, H, W)``.
Output: one of :data:`N_CLASSES` = 31 classes per pixel, class ``c = 3 * v + sub`` for vertebra
``v = 0..9`` (from the top of the chain) and subregion ``sub`` (1 body, 2 arch, 3 spinous
process), class 0 background; :data:`CLASS_LABELS` maps class ``c`` to the phantom's label value
``10 * (v + 1) + sub`` (``spine_sagittal``'s ``labels_ct`` / ``labels_mri``).

Simplification: the real algorithm labels vertebrae anatomically (C1..L5); in the phantom the
identity ``v`` is fixed by the position in the image (centre rows vary by ~1.3 px at 64 px, the
vertebra pitch is ~8.5 px), so the network gets coordinate ramps as extra input channels
(``model.position_ramps``, :func:`medgen.nn.unet.position_ramps`).

Training data (:func:`segmenter_presets`): ``data.source = "ct"``, ``data.target = ""``; the
label map is the batch meta key :data:`LABEL_KEY` (``LongTensor [*S]`` per item, moved with the
CT when ``data.registration`` is set). Same sizes and ``registration="two"`` as the ``mri_to_ct``
translator presets, so the segmenter sees real CTs in the MRI frame, as a synthesized CT.

Network and loss (MONAI): :class:`monai.networks.nets.UNet` (``channels = model.channels``,
stride 2, ``model.layers_per_block`` residual units, affine instance norm, dropout
``model.dropout``; input ``model.in_channels`` + ``spatial_dims`` ramps, output 31 channels) and
:class:`monai.losses.DiceCELoss` (softmax, one-hot target, batch Dice). One optimiser group
``"model"``; ``fit()``, ``train_or_load()``, checkpoints and the CLI work unchanged.

``translate(ct)`` returns the label map as a *float* tensor ``[B, 1, *S]`` of label values
(0, 11, 12, ... 103) for the generic Translator interface; :meth:`Segmenter.segment` returns it as
``LongTensor [B, *S]`` for :mod:`medgen.metrics.segmentation`.

Measured Dice and training times per preset: docs/paper_notes.md#segmenter
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet as MonaiUNet

from medgen.config import (ConfigError, DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig,
                           UNetConfig)
from medgen.data.batch import Batch
from medgen.methods.base import Method, reject_unknown_options
from medgen.nn.unet import position_ramps
from medgen.registry import METHODS, register

__all__ = ["Segmenter", "segmenter_presets", "CLASS_LABELS", "N_CLASSES", "N_VERT", "SUBREGIONS", "LABEL_KEY",
           "MEASURER_NOTE", "labels_to_classes", "classes_to_labels"]

N_VERT = 10  # vertebrae of the spine_sagittal chain (v = 0..9 from the top)
SUBREGIONS = ("body", "arch", "spinous")  # sub = 1, 2, 3
CLASS_LABELS = (0,) + tuple(10 * (v + 1) + sub for v in range(N_VERT) for sub in (1, 2, 3))  # class c -> label
N_CLASSES = len(CLASS_LABELS)  # 31: background + 10 vertebrae x 3 subregions
LABEL_KEY = "labels_ct"  # batch meta key of the CT's label map (LongTensor [*S] per item)
MEASURER_NOTE = ("Dice by medgen's CT segmenter trained on phantom CTs -- a stand-in for the paper's public "
                 "CT segmentation algorithm (Anduin/VerSe), not that algorithm")

# label value -> class index lookup table (values up to 103)
_LUT = torch.full((max(CLASS_LABELS) + 1,), -1, dtype=torch.long)
_LUT[torch.tensor(CLASS_LABELS)] = torch.arange(N_CLASSES)


def labels_to_classes(labels: torch.Tensor) -> torch.Tensor:
    """Label values ``[..]`` (0, 11 .. 103) -> class indices ``[..]`` (0 .. 30), LongTensor.

    Raises ValueError naming the first value that is no :data:`CLASS_LABELS` entry.
    """
    labels = labels.long()
    lut = _LUT.to(labels.device)
    bad = (labels < 0) | (labels >= len(lut))
    classes = lut[labels.clamp(0, len(lut) - 1)]
    bad |= classes < 0
    if bool(bad.any()):
        raise ValueError(f"segmenter: label value {int(labels[bad].flatten()[0])} is not one of 0 and "
                         f"10 * (v + 1) + sub (v = 0..{N_VERT - 1}, sub = 1..3)")
    return classes


def classes_to_labels(classes: torch.Tensor) -> torch.Tensor:
    """Class indices ``[..]`` (0 .. 30) -> label values ``[..]`` (0, 11 .. 103), LongTensor."""
    return torch.tensor(CLASS_LABELS, dtype=torch.long, device=classes.device)[classes.long()]


@register(METHODS, "segmenter")
class Segmenter(Method):
    """CT -> vertebra/subregion label map (see the module docstring). ``net``: the MONAI UNet."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        _validate(config)
        m = config.model
        self.in_channels, self.spatial_dims = m.in_channels, m.spatial_dims
        ramps = m.spatial_dims if m.position_ramps else 0
        self.net = MonaiUNet(spatial_dims=m.spatial_dims, in_channels=m.in_channels + ramps,
                             out_channels=N_CLASSES, channels=tuple(m.channels),
                             strides=(2,) * (len(m.channels) - 1), num_res_units=m.layers_per_block,
                             norm=("instance", {"affine": True}), dropout=m.dropout)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.factor = 2 ** (len(m.channels) - 1)  # spatial sizes must be divisible by this

    # ---- shapes ----------------------------------------------------------------------------
    def _check_source(self, source: torch.Tensor) -> None:
        if source.ndim != self.spatial_dims + 2:
            raise ValueError(f"segmenter: input {tuple(source.shape)} must have {self.spatial_dims} spatial dims "
                             f"(model.spatial_dims={self.spatial_dims})")
        if source.shape[1] != self.in_channels:
            raise ValueError(f"segmenter: input has {source.shape[1]} channels but model.in_channels="
                             f"{self.in_channels}")
        if any(s % self.factor for s in source.shape[2:]):
            raise ValueError(f"segmenter: spatial size {tuple(source.shape[2:])} must be divisible by {self.factor} "
                             f"(2 ** (len(model.channels) - 1))")

    def logits(self, source: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 31, *S]`` of CT ``source`` ``[B, C, *S]`` (model range)."""
        self._check_source(source)
        x = torch.cat([source, position_ramps(source)], 1) if self.config.model.position_ramps else source
        return self.net(x)

    # ---- training ----------------------------------------------------------------------------
    def batch_classes(self, batch: Batch) -> torch.Tensor:
        """Class-index target ``[B, 1, *S]`` from ``batch.meta[LABEL_KEY]`` (a list of ``[*S]`` or ``[B, *S]``)."""
        if LABEL_KEY not in batch.meta:
            raise ValueError(f"segmenter: batch has no label map '{LABEL_KEY}' in its meta (keys: "
                             f"{', '.join(sorted(batch.meta)) or 'none'})")
        labels = batch.meta[LABEL_KEY]
        labels = torch.stack(list(labels)) if isinstance(labels, (list, tuple)) else labels
        labels = labels.to(batch.source.device)
        if tuple(labels.shape) != (batch.source.shape[0], *batch.source.shape[2:]):
            raise ValueError(f"segmenter: label map {tuple(labels.shape)} does not match the CT "
                             f"{tuple(batch.source.shape)} (expected [B, *S])")
        return labels_to_classes(labels).unsqueeze(1)

    def training_step(self, batch: Batch, group: str = "model",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """DiceCE loss of the CT ``batch.source`` ``[B, 1, *S]`` against its label map -> ``{"loss"}``.

        ``generator`` is unused (no randomness besides dropout, seeded globally by ``fit()``).
        """
        if group != "model":
            raise ValueError(f"segmenter has one optimiser group 'model', got '{group}'")
        target = self.batch_classes(batch)
        return {"loss": self.loss_fn(self.logits(batch.source), target)}

    # ---- inference -------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, ...]:
        """The spatial size the segmenter was trained at: ``(H, W)``, or ``(D, H, W)`` in 3D
        (:func:`medgen.data.datasets.spatial_shape` of ``data``; ``H != W`` allowed)."""
        from medgen.data.datasets import spatial_shape  # lazy: the datasets need the phantoms

        return spatial_shape(self.config.data, self.spatial_dims)

    @torch.no_grad()
    def segment(self, ct: torch.Tensor, *, resize: bool = False) -> torch.Tensor:
        """Label map ``LongTensor [B, *S]`` (values :data:`CLASS_LABELS`) of CT ``[B, 1, *S]`` (model range).

        Arg-max of the logits, in eval mode (dropout off; restored afterwards). ``resize=True``
        takes a CT of any size ``S``: it is resized to :attr:`size` when it differs (antialiased
        bilinear in 2D, trilinear in 3D) and the labels come back at ``S`` (nearest neighbour).
        """
        shape = tuple(ct.shape[2:])
        x = ct.to(next(self.parameters()).device)
        if resize and shape != self.size:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            x = F.interpolate(x.float(), size=self.size, mode=mode, align_corners=False, antialias=mode == "bilinear")
        was_training = self.training
        self.eval()
        try:
            classes = self.logits(x).argmax(1)
        finally:
            self.train(was_training)
        if tuple(classes.shape[1:]) != shape:
            classes = F.interpolate(classes[:, None].float(), size=shape, mode="nearest")[:, 0].long()
        return classes_to_labels(classes)

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """:meth:`segment` as a *float* tensor ``[B, 1, *S]`` of label values (the Translator interface).

        Deterministic; ``generator`` unused; ``callback`` called once. The sampling options
        (``sampler``, ``steps`` ...) are accepted and ignored, any other is a one-line error.
        """
        reject_unknown_options("segmenter", options)
        out = self.segment(source).unsqueeze(1).float()
        if callback is not None:
            callback({"i": 0, "n": 1, "t": 0, "x": out, "x0": out})
        return out


def _validate(config: RunConfig) -> None:
    """One-line :class:`ConfigError` for settings the segmenter cannot run."""
    m = config.model
    if m.out_channels != N_CLASSES:
        raise ConfigError(f"segmenter needs model.out_channels={N_CLASSES} (background + {N_VERT} vertebrae x 3 "
                          f"subregions), got {m.out_channels}")
    if m.spatial_dims not in (2, 3):
        raise ConfigError(f"segmenter needs model.spatial_dims 2 or 3, got {m.spatial_dims}")
    if len(m.channels) < 2:
        raise ConfigError(f"segmenter needs at least two model.channels levels, got {m.channels}")
    if m.in_channels < 1:
        raise ConfigError(f"segmenter needs model.in_channels >= 1, got {m.in_channels}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if config.data.target.strip():
        raise ConfigError(f"segmenter trains on label maps from meta '{LABEL_KEY}': set data.target='' "
                          f"(got '{config.data.target}')")


# --------------------------------------------------------------------------------------
# Presets (registered by medgen.presets.mri_to_ct)
# --------------------------------------------------------------------------------------
# Sizes follow the mri_to_ct translator presets (2D side; 3D depth, side capped at 128), so the
# segmenter measures synthesized CTs at the size they are made.
_SIZE = {"ci": 32, "smoke": 32, "cpu": 64, "paper": 256}
_DEPTH_3D = {"ci": 16, "smoke": 16, "cpu": 32, "paper": 32}
_N = {"ci": (16, 4), "smoke": (512, 16), "cpu": (2048, 32), "paper": (20000, 128)}  # (n_train, n_test) subjects
_CHANNELS = {"ci": (8, 16, 32), "smoke": (16, 32, 64, 128), "cpu": (16, 32, 64, 128),
             "paper": (32, 64, 128, 256, 320)}  # paper: nnU-Net-like widths (our choice; the algorithm's are not given)
_STEPS = {"ci": 4, "smoke": 300, "cpu": 2000, "paper": 50000}  # 2D; 3D: _STEPS_3D
_STEPS_3D = {"ci": 4, "smoke": 400, "cpu": 600, "paper": 25000}  # smoke 150 steps: ceiling only 0.81
_BATCH = {"ci": 4, "smoke": 8, "cpu": 8, "paper": 8}  # 2D; 3D: _BATCH_3D
_BATCH_3D = {"ci": 4, "smoke": 8, "cpu": 2, "paper": 2}  # 3D cpu at batch 8: 6.7 s/step on one thread
_LR = {"ci": 1e-3, "smoke": 2e-3, "cpu": 2e-3, "paper": 1e-3}


def _preset(preset: str, volume: bool) -> RunConfig:
    n_train, n_test = _N[preset]
    size = _SIZE[preset] if not volume else min(_SIZE[preset], 128)
    data = DataConfig(dataset="volume" if volume else "paired", phantom="spine_sagittal", source="ct", target="",
                      image_size=size, depth=_DEPTH_3D[preset] if volume else 0,
                      n_train=n_train // (8 if volume else 1), n_test=n_test, registration="two")
    channels = _CHANNELS[preset] if not volume else _CHANNELS[preset][:4]
    model = UNetConfig(spatial_dims=3 if volume else 2, in_channels=1, out_channels=N_CLASSES, channels=channels,
                       layers_per_block=2 if preset == "paper" else 1, attention_levels=(False,) * len(channels),
                       position_ramps=True)
    train = TrainConfig(steps=(_STEPS_3D if volume else _STEPS)[preset],
                        batch_size=(_BATCH_3D if volume else _BATCH)[preset], lr=_LR[preset],
                        betas=(0.9, 0.999), ema_decay=0.0, warmup_steps=0 if preset == "ci" else 20,
                        lr_schedule="constant" if preset == "ci" else "cosine",
                        log_every=1 if preset == "ci" else 10, amp=preset == "paper")
    return RunConfig(method="segmenter", data=data, model=model, diffusion=DiffusionConfig(),
                     sample=SampleConfig(), train=train)


def segmenter_presets(volume: bool = False) -> dict[str, RunConfig]:
    """The four presets ``{ci, smoke, cpu, paper}`` of the CT segmenter, 2D (``paired``) or 3D (``volume``).

    To be registered as tasks (e.g. ``mri_to_ct/segmenter`` and ``mri_to_ct/segmenter_3d``) by
    :mod:`medgen.presets.mri_to_ct`. Data: ``spine_sagittal`` CT (``source="ct"``, ``target=""``,
    labels from meta :data:`LABEL_KEY`) at the translator presets' sizes, ``registration="two"``.
    Training: AdamW, no EMA (a segmenter is evaluated by its arg-max, EMA is not needed), cosine
    schedule after 20 warm-up steps except at ``ci``.
    """
    return {p: _preset(p, volume) for p in ("ci", "smoke", "cpu", "paper")}
