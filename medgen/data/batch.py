"""The one batch type every dataset yields and every method consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    """A paired batch.

    source: ``[B, C_s, H, W]`` or ``[B, C_s, D, H, W]`` model-range input (the condition).
    target: ``[B, C_t, ...]`` model-range ground truth (same spatial shape), or None when unpaired.
    mask:   ``[B, 1, ...]`` evaluation / loss mask in {0, 1}, or None for "everywhere".
    meta:   per-sample metadata lists (``patient_id``, labels such as Cobb angle or KL grade).
    """

    source: torch.Tensor
    target: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        """Copy tensors to ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(mv(self.source), mv(self.target), mv(self.mask), dict(self.meta))

    def __len__(self) -> int:
        return self.source.shape[0]

    def slice(self, start: int, stop: int) -> "Batch":
        """Samples ``start:stop`` (for gradient-accumulation micro-batches)."""
        sl = lambda t: None if t is None else t[start:stop]  # noqa: E731
        meta = {k: (v[start:stop] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in self.meta.items()}
        return Batch(sl(self.source), sl(self.target), sl(self.mask), meta)


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Stack a list of per-sample dicts (``source``, ``target``, optional ``mask``, other keys -> meta)."""
    out: dict[str, Any] = {}
    for key in ("source", "target", "mask"):
        vals = [s.get(key) for s in samples]
        out[key] = None if any(v is None for v in vals) else torch.stack(vals)
    meta: dict[str, list[Any]] = {}
    for s in samples:
        for k, v in s.items():
            if k not in ("source", "target", "mask"):
                meta.setdefault(k, []).append(v)
    return Batch(out["source"], out["target"], out["mask"], meta)
