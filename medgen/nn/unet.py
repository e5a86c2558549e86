"""The medgen denoising / translation UNet: one class for 2D and 3D with five condition inputs.

``UNet(cfg: UNetConfig)(x [B, in, *S], t [B] | None, cond: Condition | None) -> [B, out, *S]`` where
``*S`` is ``H, W`` (``spatial_dims=2``) or ``D, H, W`` (``spatial_dims=3``).

Layout (the DDPM / ADM UNet, as in diffusers' ``UNet2DModel`` and MONAI's ``DiffusionModelUNet``):
``conv_in`` -> per level ``layers_per_block`` residual blocks (+ attention where
``attention_levels`` says), a strided-conv downsample between levels -> middle block
(res, attention per ``mid_attention``: by default iff the deepest level has attention, res) -> per level, deepest first,
``layers_per_block + 1`` residual blocks, each on ``Concat([h, skip])``, (+ attention), a
nearest-x2 + conv upsample -> GroupNorm, SiLU, ``conv_out``. The time embedding is
sinusoidal -> MLP of width ``4 * channels[0]`` and enters every residual block.

``UNetConfig.time_embedding=False`` builds the UNet without a time embedding (``t`` is None; a
segmentation network / feature extractor, as the enhancement paper's, "excluding the layer of
timestep embedding"); its residual blocks then take only the vector / stage embeddings, or none.
``forward(..., return_features=True)`` also returns the encoder's skip features and every decoder
block's output (:meth:`UNet.feature_shapes`), for a feature extractor whose features feed another
network (e.g. a tuner computing another UNet's ``skip_residuals``).

``conv_out`` is zero-initialised (as in ADM / improved-diffusion and MONAI): the untrained
network predicts exactly 0; on the very first backward pass only ``conv_out`` gets a gradient.

Condition inputs (:class:`Condition`), each switched on by its ``UNetConfig`` field:

============== ============================ =================================================
field          tensor                       where it enters
============== ============================ =================================================
image          ``[B, cond_image_channels,   concatenated to ``x_t`` along channels before
               *S]``                        ``conv_in``
vector         ``[B, cond_vector_dim]``     Linear-SiLU-Linear, added to the time embedding
tokens         ``[B, N, cond_tokens_dim]``  cross-attention at every attention level (and
                                            the middle block if the deepest level has one),
                                            after the self-attention
skip_residuals list of ``[B, C_i, *S_i]``   added to skip feature ``i`` before the decoder
               or ``callable(skips)``       concatenates it: ``Concat([f_i + r_i, h])``
stage          ``[B, stage_embedding_dim]`` one learned projection per down level and per
               or ``(down, up)``            up level, each added to the time embedding of
                                            that stage's residual blocks
============== ============================ =================================================

*skip_residuals*: the morphology tuner of the ultrasound-enhancement paper (Eq. 8). Skip
features ``f_i``, in encoder order (:meth:`UNet.skip_shapes`): the ``conv_in`` output, every
down-path residual block's output (after its attention), every downsample's output. A callable
receives this forward pass's list of encoder features and returns the residuals (a tuner
computed from ``f_i`` itself); they are *added* to ``f_i``. *stage*: the X-ray->MRI paper's
depth / KOA embeddings (``stage=(down_emb, up_emb)``) or the UX-Diffusion angle embedding (one
vector for both paths); the middle block uses the deepest down level's embedding.

Why not MONAI's or diffusers' UNet (none has all five inputs, 2D and 3D): docs/paper_notes.md#unet
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from medgen.config import ConfigError, UNetConfig
from medgen.nn.layers import (
    Downsample,
    ResBlock,
    SpatialAttention,
    StageEmbedding,
    TimeEmbedding,
    Upsample,
    VectorEmbedding,
    conv_nd,
)

__all__ = ["Condition", "UNet", "SkipResiduals", "SKIP_MODES", "position_ramps"]

MID_ATTENTION = ("auto", "on", "off")  # middle-block self-attention (UNetConfig.mid_attention)
SKIP_MODES = ("concat", "add")  # how a decoder block takes its skip feature (UNetConfig.skip_mode)

SkipResiduals = Union[Sequence[torch.Tensor], Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]]


@dataclass
class Condition:
    """Everything a :class:`UNet` can be conditioned on; unused fields stay ``None``.

    Attributes:
        image: ``[B, cond_image_channels, *S]`` concatenated to ``x_t`` along channels.
        vector: ``[B, cond_vector_dim]`` embedded and added to the time embedding.
        tokens: ``[B, N, cond_tokens_dim]`` attended to by cross-attention at attention levels.
        skip_residuals: list of ``[B, C_i, *S_i]`` (one per skip, encoder order, shapes from
            :meth:`UNet.skip_shapes`) added to the skip features; or a callable that receives
            the encoder skip features (that list of shapes) and returns such a list.
        stage: ``[B, stage_embedding_dim]`` projected separately for every down and up level;
            or a pair ``(down [B, d], up [B, d])`` feeding the down and up paths different vectors.
    """

    image: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    skip_residuals: SkipResiduals | None = None
    stage: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None


def validate_config(cfg: UNetConfig) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) naming the fields of an impossible ``cfg``."""
    ch, att = tuple(cfg.channels), tuple(cfg.attention_levels)
    if cfg.spatial_dims not in (2, 3):
        raise ConfigError(f"UNetConfig.spatial_dims={cfg.spatial_dims} must be 2 or 3")
    if not ch or min(ch) <= 0:
        raise ConfigError(f"UNetConfig.channels={ch} must be a non-empty tuple of positive integers")
    if len(att) != len(ch):
        raise ConfigError(f"len(UNetConfig.attention_levels)={len(att)} != len(UNetConfig.channels)={len(ch)}")
    if cfg.in_channels <= 0 or cfg.out_channels <= 0 or cfg.layers_per_block <= 0:
        raise ConfigError(f"UNetConfig.in_channels={cfg.in_channels}, out_channels={cfg.out_channels} and "
                          f"layers_per_block={cfg.layers_per_block} must be positive")
    if cfg.norm_groups <= 0 or any(c % cfg.norm_groups for c in ch):
        raise ConfigError(f"UNetConfig.norm_groups={cfg.norm_groups} does not divide every entry of "
                          f"UNetConfig.channels={ch}")
    bad_heads = [c for c, a in zip(ch, att) if a and (cfg.num_heads <= 0 or c % cfg.num_heads)]
    if bad_heads:
        raise ConfigError(f"UNetConfig.num_heads={cfg.num_heads} does not divide UNetConfig.channels "
                          f"{bad_heads} at attention levels")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"UNetConfig.dropout={cfg.dropout} must be in [0, 1)")
    for name in ("cond_image_channels", "cond_vector_dim", "cond_tokens_dim", "stage_embedding_dim"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"UNetConfig.{name}={getattr(cfg, name)} must be >= 0")
    if cfg.mid_attention not in MID_ATTENTION:
        raise ConfigError(f"UNetConfig.mid_attention='{cfg.mid_attention}' must be one of {', '.join(MID_ATTENTION)}")
    if cfg.mid_attention == "on" and (cfg.num_heads <= 0 or ch[-1] % cfg.num_heads):
        raise ConfigError(f"UNetConfig.num_heads={cfg.num_heads} does not divide the middle block's "
                          f"channels {ch[-1]} (UNetConfig.mid_attention='on')")
    if cfg.skip_mode not in SKIP_MODES:
        raise ConfigError(f"UNetConfig.skip_mode='{cfg.skip_mode}' must be one of {', '.join(SKIP_MODES)}")
    if cfg.cond_tokens_dim and not any(att):
        raise ConfigError(f"UNetConfig.cond_tokens_dim={cfg.cond_tokens_dim} needs cross-attention but "
                          f"UNetConfig.attention_levels={att} has no attention level")


def position_ramps(x: torch.Tensor) -> torch.Tensor:
    """Coordinate ramps ``[B, n, *S]`` for ``x [B, C, *S]`` (n = number of spatial dims).

    Channel ``k`` rises linearly from 0 at the first to 1 at the last index of spatial axis
    ``k`` (a single-pixel axis is 0). The spine paper's 3D network concatenates such ramps
    to its input so that a fully convolutional net knows where in the volume it is.
    """
    b, spatial = x.shape[0], x.shape[2:]
    axes = [torch.linspace(0.0, 1.0, s, device=x.device, dtype=x.dtype) if s > 1
            else torch.zeros(1, device=x.device, dtype=x.dtype) for s in spatial]
    grids = torch.meshgrid(*axes, indexing="ij")         # n tensors [*S]
    return torch.stack(grids).unsqueeze(0).expand(b, -1, *spatial)   # [B, n, *S]


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resample.

    ``skip_projs`` (decoder levels with ``skip_mode="add"`` only): one module per block mapping
    the skip feature to the block's input channels (a 1x1 conv, or identity when they match).
    """

    def __init__(self, blocks: list[ResBlock], attns: list[SpatialAttention], resample: nn.Module | None,
                 skip_projs: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # empty, or one per block
        self.resample = resample
        self.skip_projs = nn.ModuleList(skip_projs) if skip_projs else None


class UNet(nn.Module):
    """Conditional diffusion UNet for ``[B, C, H, W]`` or ``[B, C, D, H, W]`` (see module docstring)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.config = cfg
        sd, ch, n = cfg.spatial_dims, tuple(cfg.channels), len(cfg.channels)
        # no embedding at all (emb_dim 0: the residual blocks get none) only without time, vector and stage
        self.emb_dim = emb = 4 * ch[0] if cfg.time_embedding or cfg.cond_vector_dim or cfg.stage_embedding_dim else 0
        self.time_embed = TimeEmbedding(ch[0], emb) if cfg.time_embedding else None
        self.vector_embed = VectorEmbedding(cfg.cond_vector_dim, emb) if cfg.cond_vector_dim else None
        d_stage = cfg.stage_embedding_dim
        self.stage_down = StageEmbedding(d_stage, n, emb) if d_stage else None
        self.stage_up = StageEmbedding(d_stage, n, emb) if d_stage else None
        n_ramps = sd if cfg.position_ramps else 0
        self.conv_in = conv_nd(sd, cfg.in_channels + cfg.cond_image_channels + n_ramps, ch[0])
        self._skip_plan: list[tuple[int, int]] = [(ch[0], 1)]  # (channels, downsampling factor)
        self.down = nn.ModuleList(self._down_level(i, ch[i - 1] if i else ch[0]) for i in range(n))
        mid_attn = cfg.attention_levels[-1] if cfg.mid_attention == "auto" else cfg.mid_attention == "on"
        self.mid = _Level([self._res(ch[-1], ch[-1]), self._res(ch[-1], ch[-1])],
                          [self._attn(ch[-1])] if mid_attn else [], None)
        skip_channels = [c for c, _ in self._skip_plan]
        self._decoder_plan: list[tuple[int, int]] = []  # (channels, downsampling factor) of every decoder block
        self.up = nn.ModuleList(self._up_level(i, skip_channels) for i in reversed(range(n)))
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0])
        self.conv_out = conv_nd(sd, ch[0], cfg.out_channels)
        nn.init.zeros_(self.conv_out.weight)  # zero-init: the untrained net predicts 0 (module docstring)
        nn.init.zeros_(self.conv_out.bias)

    # ---------------------------------------------------------------- construction helpers
    def _res(self, c_in: int, c_out: int) -> ResBlock:
        cfg = self.config
        return ResBlock(cfg.spatial_dims, c_in, c_out, self.emb_dim, cfg.norm_groups, cfg.dropout)

    def _attn(self, c: int) -> SpatialAttention:
        return SpatialAttention(c, self.config.num_heads, self.config.norm_groups, self.config.cond_tokens_dim)

    def _down_level(self, i: int, c_in: int) -> _Level:
        cfg, c = self.config, self.config.channels[i]
        blocks = [self._res(c_in if j == 0 else c, c) for j in range(cfg.layers_per_block)]
        attns = [self._attn(c) for _ in blocks] if cfg.attention_levels[i] else []
        self._skip_plan += [(c, 2**i)] * len(blocks)
        last = i == len(cfg.channels) - 1
        if not last:
            self._skip_plan.append((c, 2 ** (i + 1)))
        return _Level(blocks, attns, None if last else Downsample(cfg.spatial_dims, c))

    def _up_level(self, i: int, skip_channels: list[int]) -> _Level:
        cfg, c = self.config, self.config.channels[i]
        c_prev = cfg.channels[min(i + 1, len(cfg.channels) - 1)]
        blocks, projs = [], []
        self._decoder_plan += [(c, 2**i)] * (cfg.layers_per_block + 1)
        for j in range(cfg.layers_per_block + 1):
            c_h, c_skip = (c_prev if j == 0 else c), skip_channels.pop()
            if cfg.skip_mode == "add":  # h + proj(skip): the block sees c_h channels
                projs.append(nn.Identity() if c_skip == c_h else conv_nd(cfg.spatial_dims, c_skip, c_h, 1))
                blocks.append(self._res(c_h, c))
            else:  # Concat([h, skip])
                blocks.append(self._res(c_h + c_skip, c))
        attns = [self._attn(c) for _ in blocks] if cfg.attention_levels[i] else []
        return _Level(blocks, attns, Upsample(cfg.spatial_dims, c) if i else None, projs)

    # ---------------------------------------------------------------- public helpers
    def skip_shapes(self, spatial_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """``(C_i, *S_i)`` of every skip tensor, in the order the encoder produces them.

        ``spatial_shape`` is ``S`` of the input ``x [B, C, *S]``, e.g. ``(16, 16)`` or ``(8, 8, 8)``.
        """
        spatial = tuple(int(s) for s in spatial_shape)
        self._check_spatial(spatial, "spatial_shape")
        return [(c, *(s // f for s in spatial)) for c, f in self._skip_plan]

    def feature_shapes(self, spatial_shape: Sequence[int]) -> dict[str, list[tuple[int, ...]]]:
        """``(C_i, *S_i)`` of the features ``forward(..., return_features=True)`` returns.

        ``{"encoder": skip_shapes(spatial_shape), "decoder": [...]}``: decoder feature ``j`` is the
        output of the decoder block that took encoder skip ``len - 1 - j`` (same count).
        """
        spatial = tuple(int(s) for s in spatial_shape)
        return {"encoder": self.skip_shapes(spatial),
                "decoder": [(c, *(s // f for s in spatial)) for c, f in self._decoder_plan]}

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond: Condition | None = None, *,
                return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Predict ``[B, out_channels, *S]`` from ``x [B, in_channels, *S]`` at timesteps ``t [B]``.

        ``t`` holds integer timestep indices (LongTensor) or float times; a 0-d tensor is
        broadcast over the batch; it must be None when ``UNetConfig.time_embedding`` is False
        (and given otherwise). ``cond`` carries the conditions the config enables.

        ``return_features=True`` returns ``(out, {"encoder": [...], "decoder": [...]})`` with
        tensors ``[B, C_i, *S_i]`` of the shapes :meth:`feature_shapes` gives: the encoder's skip
        features in encoder order (before ``cond.skip_residuals`` are added) and every decoder
        block's output (after its attention, before the level's upsample), deepest first.
        """
        cond = cond if cond is not None else Condition()
        self._check_input(x)
        t = self._check_t(t, x)
        self._check_condition(cond, x)
        emb_down, emb_up = self._embeddings(t, cond)
        inputs = [x] + ([cond.image] if cond.image is not None else [])
        if self.config.position_ramps:
            inputs.append(position_ramps(x))
        h = self.conv_in(torch.cat(inputs, 1))   # [B, in + cond + ramps, *S] -> [B, ch0, *S]
        skips = [h]
        for level, emb in zip(self.down, emb_down):
            h = self._run_level(level, h, emb, cond.tokens, skips_out=skips)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        encoder = list(skips) if return_features else None
        skips = self._add_skip_residuals(skips, cond.skip_residuals)
        h = self._run_mid(h, emb_down[-1], cond.tokens)
        decoder: list[torch.Tensor] | None = [] if return_features else None
        for level, emb in zip(self.up, reversed(emb_up)):
            h = self._run_level(level, h, emb, cond.tokens, skips_in=skips, skips_out=decoder)
            if level.resample is not None:
                h = level.resample(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, {"encoder": encoder, "decoder": decoder}) if return_features else out

    @staticmethod
    def _run_level(level: _Level, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None,
                   skips_out: list[torch.Tensor] | None = None, skips_in: list[torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """Residual blocks (+ attention) of one level; pops ``skips_in``, pushes every output to ``skips_out``."""
        for j, block in enumerate(level.blocks):
            if skips_in is not None:
                skip = skips_in.pop()
                h = h + level.skip_projs[j](skip) if level.skip_projs is not None else torch.cat([h, skip], 1)
            h = block(h, emb)
            if level.attns:
                h = level.attns[j](h, tokens)
            if skips_out is not None:
                skips_out.append(h)
        return h

    def _run_mid(self, h: torch.Tensor, emb: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
        h = self.mid.blocks[0](h, emb)
        if self.mid.attns:
            h = self.mid.attns[0](h, tokens)
        return self.mid.blocks[1](h, emb)

    def _embeddings(self, t: torch.Tensor | None, cond: Condition
                    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Activated (SiLU) embeddings ``[B, E]`` for every down level and every up level
        (all None for a UNet without time, vector and stage embeddings)."""
        emb = self.time_embed(t) if self.time_embed is not None else None  # [B, E]
        if self.vector_embed is not None:
            vec = self.vector_embed(cond.vector)
            emb = vec if emb is None else emb + vec
        n = len(self.config.channels)
        if self.stage_down is None:
            act = F.silu(emb) if emb is not None else None
            return [act] * n, [act] * n
        s_down, s_up = cond.stage if isinstance(cond.stage, (tuple, list)) else (cond.stage, cond.stage)
        base = emb[:, None] if emb is not None else 0.0
        down = F.silu(base + self.stage_down(s_down))  # [B, n, E]
        up = F.silu(base + self.stage_up(s_up))  # [B, n, E]
        return list(down.unbind(1)), list(up.unbind(1))

    def _add_skip_residuals(self, skips: list[torch.Tensor], residuals: SkipResiduals | None) -> list[torch.Tensor]:
        if residuals is None:
            return skips
        if callable(residuals):
            residuals = residuals(list(skips))
        self._check_residuals(residuals, skips)
        return [s + r for s, r in zip(skips, residuals)]

    # ---------------------------------------------------------------- validation
    def _check_spatial(self, spatial: tuple[int, ...], what: str) -> None:
        cfg, factor = self.config, 2 ** (len(self.config.channels) - 1)
        if len(spatial) != cfg.spatial_dims:
            raise ValueError(f"{what} {spatial} has {len(spatial)} spatial dims but UNetConfig.spatial_dims="
                             f"{cfg.spatial_dims}")
        if any(s % factor for s in spatial):
            raise ValueError(f"{what} {spatial} is not divisible by 2**(len(UNetConfig.channels)-1)={factor}")

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != cfg.spatial_dims + 2:
            layout = "[B, C, H, W]" if cfg.spatial_dims == 2 else "[B, C, D, H, W]"
            raise ValueError(f"x has shape {tuple(x.shape)} but UNetConfig.spatial_dims={cfg.spatial_dims} "
                             f"expects {layout}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but UNetConfig.in_channels={cfg.in_channels}")
        self._check_spatial(tuple(x.shape[2:]), "x spatial size")

    def _check_t(self, t: torch.Tensor | float | int | None, x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.time_embedding:
            if t is not None:
                raise ValueError("t was given but UNetConfig.time_embedding=False (pass t=None)")
            return None
        if t is None:
            raise ValueError("UNetConfig.time_embedding=True requires t [B] (timesteps)")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            return t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {tuple(t.shape)} but x has batch size {x.shape[0]}; t must be [B]")
        return t

    def _check_condition(self, cond: Condition, x: torch.Tensor) -> None:
        cfg, b, spatial = self.config, x.shape[0], tuple(x.shape[2:])
        if _present("image", cond.image, "cond_image_channels", cfg.cond_image_channels):
            _check_shape("image", cond.image, (b, cfg.cond_image_channels, *spatial), "[B, c, *S] matching x",
                         f"cond_image_channels={cfg.cond_image_channels}")
        if _present("vector", cond.vector, "cond_vector_dim", cfg.cond_vector_dim):
            _check_shape("vector", cond.vector, (b, cfg.cond_vector_dim), "[B, d]",
                         f"cond_vector_dim={cfg.cond_vector_dim}")
        if _present("tokens", cond.tokens, "cond_tokens_dim", cfg.cond_tokens_dim):
            n_tokens = cond.tokens.shape[1] if cond.tokens.dim() == 3 else -1
            _check_shape("tokens", cond.tokens, (b, n_tokens, cfg.cond_tokens_dim), "[B, N, d]",
                         f"cond_tokens_dim={cfg.cond_tokens_dim}")
        _present("skip_residuals", cond.skip_residuals, "skip_residuals", cfg.skip_residuals)
        if _present("stage", cond.stage, "stage_embedding_dim", cfg.stage_embedding_dim):
            pair = isinstance(cond.stage, (tuple, list))
            stages = cond.stage if pair else (cond.stage,)
            if pair and len(stages) != 2:
                raise ValueError(f"cond.stage is a sequence of {len(stages)} tensors; give one [B, d] or a "
                                 f"pair (down, up)")
            for s in stages:
                _check_shape("stage", s, (b, cfg.stage_embedding_dim), "[B, d]",
                             f"stage_embedding_dim={cfg.stage_embedding_dim}")

    def _check_residuals(self, residuals: Sequence[torch.Tensor], skips: list[torch.Tensor]) -> None:
        if len(residuals) != len(skips):
            raise ValueError(f"cond.skip_residuals has {len(residuals)} tensors but the UNet has {len(skips)} "
                             f"skip connections (see UNet.skip_shapes)")
        for i, (r, s) in enumerate(zip(residuals, skips)):
            if r.shape != s.shape:
                raise ValueError(f"cond.skip_residuals[{i}] has shape {tuple(r.shape)} but skip {i} has shape "
                                 f"{tuple(s.shape)} (see UNet.skip_shapes)")


def _present(name: str, value: object, cfg_field: str, cfg_value: int | bool) -> bool:
    """Whether ``cond.<name>`` is given; raise if that disagrees with ``UNetConfig.<cfg_field>``."""
    if value is None and cfg_value:
        raise ValueError(f"UNetConfig.{cfg_field}={cfg_value} requires cond.{name}")
    if value is not None and not cfg_value:
        raise ValueError(f"cond.{name} was given but UNetConfig.{cfg_field}={cfg_value}")
    return value is not None


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], layout: str, setting: str) -> None:
    """Raise if ``cond.<name>`` does not have exactly ``shape`` (no silent broadcasting)."""
    if tuple(tensor.shape) != shape:
        raise ValueError(f"cond.{name} has shape {tuple(tensor.shape)}, expected {list(shape)} {layout} "
                         f"(UNetConfig.{setting})")
