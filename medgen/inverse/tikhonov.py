"""Direct inverse of a forward operator: Tikhonov-regularised least squares ``y -> x [B, 1, H, W]``.

:func:`tikhonov` solves ``argmin_x ||y - A(x)||^2 + lam ||x - x_ref||^2`` by batched conjugate
gradients (linear operators) or L-BFGS (the nonlinear acoustic model); :func:`tikhonov_auto`
picks ``lam`` per image by the discrepancy principle.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from medgen.inverse.operators import InverseError, residual_norm

CG_TOL = 1e-6  # relative residual ||r|| / ||b|| at which a sample's CG stops
DEFAULT_LAM_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 3))  # tikhonov_auto's weights: 1e-6 .. 10, half decades
DISCREPANCY_TAU = 1.0  # discrepancy principle: ||y - A x||^2 <= tau M sigma^2


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product of ``[B, ...]`` tensors -> ``[B, 1, 1, 1]``."""
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


def _cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor, iters: int,
        tol: float) -> torch.Tensor:
    """Batched conjugate gradients for the SPD systems ``apply(x) = b`` (``[B, 1, H, W]``).

    Each sample has its own step sizes; a sample whose ``||r|| <= tol ||b||`` is frozen
    (its step size is set to 0) while the others continue."""
    r = b - apply(x)  # 1. residual and first search direction
    p, rr = r.clone(), _bdot(r, r)
    stop = tol**2 * _bdot(b, b).clamp_min(1e-30)
    for _ in range(iters):
        active = rr > stop
        if not bool(active.any()):
            break
        ap = apply(p)
        alpha = torch.where(active, rr / _bdot(p, ap).clamp_min(1e-30), torch.zeros_like(rr))  # 2. step
        x, r = x + alpha * p, r - alpha * ap  # 3. update iterate and residual
        rr_new = _bdot(r, r)
        p = r + torch.where(active, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr)) * p  # 4. new direction
        rr = torch.where(active, rr_new, rr)
    return x


def tikhonov(operator: nn.Module, y: torch.Tensor, *, lam: float, iters: int = 100,
             x_init: torch.Tensor | None = None, x_ref: torch.Tensor | float = 0.0, tol: float = CG_TOL,
             clamp: bool = True) -> torch.Tensor:
    """Direct inverse: ``argmin_x ||y - A(x)||^2 + lam ||x - x_ref||^2``, y -> x ``[B, 1, H, W]``.

    ``lam`` is in the units of the data term (squared measurement units per squared model
    unit). Linear operators: the normal equations ``(A^T A + lam I) x = A^T y + lam x_ref``
    solved by batched conjugate gradients (at most ``iters`` iterations, per-sample stop at
    relative residual ``tol``) from ``x_init`` (default zeros). Nonlinear operators (the
    acoustic model): the "direct inverse" of a nonlinear model, the same objective minimised
    by L-BFGS (strong-Wolfe line search, ``iters`` iterations) from ``x_init`` (default the
    constant image ``x_ref``); a local minimum. The batch is one L-BFGS problem: its objective
    is a sum of independent per-image terms, but the line search and curvature memory are
    shared, so pass one image at a time for batch-independent results. ``x_ref`` (default 0, mid-grey = -200 HU) is a
    float or ``[B, 1, H, W]``. ``clamp``: clip the result to ``[-1, 1]`` (the model range).
    """
    if lam < 0:
        raise InverseError(f"tikhonov: lam must be >= 0, got {lam}")
    operator._check_y(y)
    b = y.shape[0]
    shape = (b, 1, *operator.size)
    ref = torch.as_tensor(x_ref, dtype=y.dtype, device=y.device).expand(shape)
    if x_init is not None:
        x0 = x_init.detach().to(y).expand(shape).clone()
    else:  # CG starts from zeros, L-BFGS from the reference image
        x0 = torch.zeros(shape, dtype=y.dtype, device=y.device) if operator.linear else ref.clone()
    if operator.linear:
        with torch.no_grad():
            rhs = operator.adjoint(y) + lam * ref  # A^T y + lam x_ref
            x = _cg(lambda v: operator.adjoint(operator(v)) + lam * v, rhs, x0, iters, tol)
    else:
        x = _lbfgs(operator, y, lam, ref, x0, iters)
    return x.clamp(-1.0, 1.0) if clamp else x


def _lbfgs(operator: nn.Module, y: torch.Tensor, lam: float, ref: torch.Tensor, x0: torch.Tensor,
           iters: int) -> torch.Tensor:
    """L-BFGS on ``sum_b ||y_b - A(x_b)||^2 + lam ||x_b - ref_b||^2`` (samples independent)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (y - operator(x)).pow(2).sum() + lam * (x - ref).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return x.detach()


def tikhonov_auto(operator: nn.Module, y: torch.Tensor, noise_std: float, grid: Sequence[float] = DEFAULT_LAM_GRID,
                  *, tau: float = DISCREPANCY_TAU, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tikhonov` with ``lam`` picked per image by the discrepancy principle.

    For every ``lam`` in ``grid`` the batch is solved; per image the *largest* ``lam`` whose
    squared residual ``||y - A x||^2 <= tau M noise_std^2`` (``M`` = ``operator.n_measurements``;
    the residual then matches the noise level) is kept, or the smallest ``lam`` if none does.
    The residual is that of the unclamped solution (clipping to ``[-1, 1]`` raises it, though
    it only brings ``x`` closer to any truth inside the range); ``clamp`` (default True) is
    applied to the chosen solution. ``kwargs`` go to :func:`tikhonov`. Returns ``(x [B, 1, H, W], lam [B])``.
    """
    lams = sorted(float(v) for v in grid)
    if not lams:
        raise InverseError("tikhonov_auto: empty lam grid")
    target = tau * operator.n_measurements * float(noise_std) ** 2
    clamp = kwargs.pop("clamp", True)
    best_x, best_lam = None, torch.full((y.shape[0],), lams[0], dtype=torch.float64)
    for lam in lams:  # ascending: later (larger) lam overwrite where they still fit the data
        x = tikhonov(operator, y, lam=lam, clamp=False, **kwargs)  # the residual of the unclamped solution
        ok = (residual_norm(operator, y, x) ** 2 <= target).cpu()
        if best_x is None:
            best_x = x
            continue
        best_x = torch.where(ok.view(-1, 1, 1, 1).to(x.device), x, best_x)
        best_lam = torch.where(ok, torch.full_like(best_lam, lam), best_lam)
    return (best_x.clamp(-1.0, 1.0) if clamp else best_x), best_lam
