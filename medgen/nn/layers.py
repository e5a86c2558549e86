"""Building blocks of :class:`medgen.nn.unet.UNet`, for 2D ``[B, C, H, W]`` and 3D ``[B, C, D, H, W]``.

- :class:`TimeEmbedding`: sinusoidal timestep features (diffusers' ``get_timestep_embedding``)
  followed by a two-layer SiLU MLP, ``t [B] -> [B, E]``.
- :class:`VectorEmbedding`: the same MLP for a condition vector ``[B, d] -> [B, E]``.
- :class:`StageEmbedding`: one learned linear projection per UNet stage, computed as a single
  matmul, ``[B, d] -> [B, n_stages, E]``.
- :class:`ResBlock`: GroupNorm-SiLU-conv, plus the stage's embedding, GroupNorm-SiLU-dropout-conv,
  residual (1x1 conv when channels change).
- :class:`SpatialAttention`: multi-head self-attention over all voxels, then optional
  cross-attention to condition tokens ``[B, N, d]``; both use ``F.scaled_dot_product_attention``.
- :class:`Downsample` (strided 3x3 conv) and :class:`Upsample` (nearest x2 then 3x3 conv).

Why these are written here rather than taken from MONAI (``monai.networks.nets.diffusion_model_unet``)
or diffusers (``diffusers.models.resnet`` / ``attention_processor``):
- the library residual blocks take the raw time embedding and apply SiLU + a linear layer to it
  in every block; here the UNet applies SiLU once per stage (the stage embeddings make the
  embedding differ between stages) and each block only projects it;
- MONAI's ``DiffusionUNetResnetBlock`` has no dropout (``UNetConfig.dropout`` needs one) and is
  2D/3D only through MONAI's generic ``Convolution`` wrapper;
- MONAI's cross-attention (``SpatialTransformer``) is a full transformer layer (self-attention,
  cross-attention and a 4x GEGLU feed-forward between two 1x1 convs): several times the work of
  the plain cross-attention (one attention + one projection) used here;
- diffusers' blocks are 2D only.
The sinusoidal timestep features are diffusers' own function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

__all__ = [
    "conv_nd",
    "TimeEmbedding",
    "VectorEmbedding",
    "StageEmbedding",
    "ResBlock",
    "SpatialAttention",
    "Downsample",
    "Upsample",
]


def conv_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """A "same"-padded ``nn.Conv2d`` (spatial_dims=2) or ``nn.Conv3d`` (spatial_dims=3)."""
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class TimeEmbedding(nn.Module):
    """Timestep ``t [B]`` (integer indices or float times) -> embedding ``[B, emb_dim]``.

    Sinusoidal features of width ``base_dim`` (cos first, as in diffusers' ``UNet2DModel``
    with ``flip_sin_to_cos=True, freq_shift=0``) followed by Linear-SiLU-Linear.
    """

    def __init__(self, base_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = _mlp(base_dim, emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B]`` -> ``[B, emb_dim]``."""
        feats = get_timestep_embedding(t, self.base_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class VectorEmbedding(nn.Module):
    """Condition vector ``[B, in_dim]`` -> ``[B, emb_dim]`` via Linear-SiLU-Linear."""

    def __init__(self, in_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, emb_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``v [B, in_dim]`` -> ``[B, emb_dim]``."""
        return self.mlp(v)


class StageEmbedding(nn.Module):
    """Separate learned linear projections of one vector, one per stage.

    ``s [B, in_dim] -> [B, n_stages, emb_dim]``; row ``i`` is ``W_i s + b_i``. All stages are
    computed by one ``nn.Linear(in_dim, n_stages * emb_dim)`` (same maths, one matmul).
    """

    def __init__(self, in_dim: int, n_stages: int, emb_dim: int) -> None:
        super().__init__()
        self.n_stages, self.emb_dim = n_stages, emb_dim
        self.proj = nn.Linear(in_dim, n_stages * emb_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``s [B, in_dim]`` -> ``[B, n_stages, emb_dim]``."""
        return self.proj(s).view(s.shape[0], self.n_stages, self.emb_dim)  # [B, n*E] -> [B, n, E]


class ResBlock(nn.Module):
    """Residual block with an additive embedding, ``[B, C_in, *S] -> [B, C_out, *S]``.

    ``h = conv1(SiLU(GN(x))) + Linear(emb); out = skip(x) + conv2(dropout(SiLU(GN(h))))``.
    ``emb`` is the stage's embedding *after* SiLU (the UNet applies SiLU once per stage).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_dim: int,
                 norm_groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels) if emb_dim else None  # emb_dim 0: no embedding
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv_nd(spatial_dims, out_channels, out_channels)
        self.skip = nn.Identity() if in_channels == out_channels else conv_nd(spatial_dims, in_channels, out_channels, 1)
        self._emb_view = (-1, out_channels) + (1,) * spatial_dims

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """``x [B, C_in, *S]``, ``emb [B, E]`` (already activated; None when ``emb_dim`` is 0) -> ``[B, C_out, *S]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        # In-place adds are safe: convolution backward does not need its own output.
        if self.emb_proj is not None:
            h.add_(self.emb_proj(emb).view(self._emb_view))  # [B, C_out] -> [B, C_out, 1, 1(, 1)]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(self.skip(x))


class SpatialAttention(nn.Module):
    """Self-attention over all positions, then (if ``context_dim``) cross-attention to tokens.

    ``x [B, C, *S]`` is flattened to a sequence of ``L = prod(S)`` tokens of width ``C``.
    Self-attention: GroupNorm, fused q/k/v projection, ``num_heads`` heads, output projection,
    residual. Cross-attention: LayerNorm, queries from the features, keys/values from the
    condition tokens ``[B, N, context_dim]``, output projection, residual.
    """

    def __init__(self, channels: int, num_heads: int, norm_groups: int, context_dim: int = 0) -> None:
        super().__init__()
        self.heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.context_dim = context_dim
        if context_dim:
            self.norm_cross = nn.LayerNorm(channels)
            self.q_cross = nn.Linear(channels, channels)
            self.kv_cross = nn.Linear(context_dim, 2 * channels)
            self.proj_cross = nn.Linear(channels, channels)

    def _split_heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, L, n*C]`` -> ``[n, B, heads, L, C/heads]`` (a view)."""
        b, length, width = t.shape
        return t.view(b, length, n, self.heads, width // (n * self.heads)).permute(2, 0, 3, 1, 4)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads ``[B, heads, L, c]`` -> merged ``[B, L, heads*c]``."""
        o = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, c]
        return o.transpose(1, 2).flatten(2)  # [B, heads, L, c] -> [B, L, heads*c]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, *S]``, ``context [B, N, context_dim]`` (when built with one) -> ``[B, C, *S]``."""
        seq = self.norm(x).flatten(2).transpose(1, 2)  # [B, C, *S] -> [B, L, C]
        q, k, v = self._split_heads(self.qkv(seq), 3)  # each [B, heads, L, C/heads]
        h = self.proj(self._attend(q, k, v))  # [B, L, C]
        h.add_(x.flatten(2).transpose(1, 2))  # residual, [B, C, *S] -> [B, L, C] view
        if self.context_dim:
            q = self._split_heads(self.q_cross(self.norm_cross(h)), 1)[0]  # [B, heads, L, C/heads]
            k, v = self._split_heads(self.kv_cross(context), 2)  # each [B, heads, N, C/heads]
            h = h + self.proj_cross(self._attend(q, k, v))  # [B, L, C]
        # Back to channel-first and contiguous: the following convolutions are ~1.4x slower
        # on channels-last input on the reference CPU (TOOLCHAIN.md).
        return h.transpose(1, 2).reshape(x.shape).contiguous()  # [B, L, C] -> [B, C, *S]


class Downsample(nn.Module):
    """Strided 3x3 convolution, ``[B, C, *S] -> [B, C, *S/2]``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, *S]`` -> ``[B, C, *S/2]``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution, ``[B, C, *S] -> [B, C, *2S]``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, *S]`` -> ``[B, C, *2S]``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
