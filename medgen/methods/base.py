"""The Method / Translator interface shared by every diffusion model and GAN.

``fit()`` trains any :class:`Method`; notebooks, ``evaluate()`` and the demos only call
:meth:`Method.translate`, so they never branch on the kind of model.

A method owns one or more optimiser groups (``{"model": params}`` for diffusion,
``{"generator": ..., "discriminator": ...}`` for GANs). Each optimiser step, ``fit()``
calls :meth:`begin_step` once per micro-batch (draws shared by every group), then
:meth:`training_step` once per group and micro-batch, in the order of :meth:`param_groups`,
and back-propagates the returned ``"loss"`` into that group's parameters only.
:meth:`optim_settings` gives a group its own learning rate / betas / weight decay, a step
rate (``every``) and permission to share parameters with an earlier group (``shared``).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from medgen.config import RunConfig, SampleConfig
from medgen.data.batch import Batch

# The CLI and notebooks pass one set of sampling options (cfg.sample's fields) to every method;
# methods that do not sample accept them with no effect.
IGNORED_OPTIONS = tuple(f.name for f in dataclasses.fields(SampleConfig))


@dataclasses.dataclass(frozen=True)
class GroupSettings:
    """How ``fit()`` optimises one group of :meth:`Method.param_groups` (``None``: the train config's value).

    A group's AdamW uses ``lr`` / ``betas`` / ``weight_decay`` (the LR schedule of ``cfg.train``
    scales ``lr`` as it scales ``train.lr``). It steps on optimiser steps ``s`` (0-based) with
    ``s % every == 0`` only (its LR schedule still follows the global step). ``shared=True``
    lets the group hold parameters an earlier group also holds: each group's optimiser then
    updates them in its own step, with its own moments (UXDiff's Algorithm 1: one angle
    transformer updated with the main denoiser, then with the auxiliary one); without it a
    shared parameter is an error. The EMA averages every parameter once, whatever its groups.
    """

    lr: float | None = None  # peak learning rate of this group (None: train.lr)
    betas: tuple[float, float] | None = None  # AdamW betas (None: train.betas)
    weight_decay: float | None = None  # AdamW weight decay (None: train.weight_decay)
    every: int = 1  # step this group every k-th optimiser step (k >= 1; steps 0, k, 2k, ...)
    shared: bool = False  # may hold parameters of an earlier group (stepped by both optimisers)

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"GroupSettings.lr must be > 0 or None, got {self.lr}")
        if self.betas is not None and not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"GroupSettings.betas must be two values in [0, 1) or None, got {self.betas}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"GroupSettings.weight_decay must be >= 0 or None, got {self.weight_decay}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"GroupSettings.every must be an integer >= 1, got {self.every!r}")


def reject_unknown_options(method: str, options: Iterable[str], valid: Iterable[str] = ()) -> None:
    """One-line ``ValueError`` for the first option that is neither in ``valid`` nor ignored."""
    valid = tuple(valid)
    unknown = [k for k in options if k not in valid and k not in IGNORED_OPTIONS]
    if unknown:
        known = "valid: " + ", ".join(valid) if valid else "it has none"
        raise ValueError(f"unknown option '{unknown[0]}' for method '{method}' ({known}; "
                         f"ignored: {', '.join(IGNORED_OPTIONS)})")


# --------------------------------------------------------------------------------------
# Per-sample conditions (translate(source, cond={key: values [B]}))
# --------------------------------------------------------------------------------------
Conditions = Mapping[str, Any]  # condition key -> per-sample values: a tensor [B], a sequence of B numbers, or one number


def _keys_text(keys: Sequence[str]) -> str:
    return f"its conditions: {', '.join(keys)}" if keys else "it takes no conditions"


def check_conditions(keys: Sequence[str], cond: Conditions | None, batch_size: int, *,
                     method: str = "method") -> dict[str, torch.Tensor]:
    """``cond`` checked against a method's condition ``keys``: ``{key: float32 tensor [B]}`` in ``keys`` order.

    Each value is a tensor ``[B]`` (kept on its device), a sequence of ``batch_size`` numbers, or
    one number used for every sample. ``None`` or ``{}`` is what a method without keys takes.
    A missing or unknown key, a wrong length or a non-finite value is a one-line ``ValueError``
    naming the key and the method's keys.
    """
    cond = {} if cond is None else cond
    if not isinstance(cond, Mapping):
        raise ValueError(f"cond of method '{method}' must map condition names to values [B], "
                         f"got {type(cond).__name__} ({_keys_text(keys)})")
    unknown = [k for k in cond if k not in keys]
    if unknown:
        raise ValueError(f"unknown condition '{unknown[0]}' for method '{method}' ({_keys_text(keys)})")
    missing = [k for k in keys if k not in cond]
    if missing:
        raise ValueError(f"missing condition '{missing[0]}' for method '{method}' ({_keys_text(keys)}); "
                         f"pass cond={{'{missing[0]}': values [B]}}")
    out = {}
    for key in keys:
        try:
            value = torch.as_tensor(cond[key], dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"condition '{key}' of method '{method}' is not numeric: {cond[key]!r}") from None
        if value.ndim == 0:
            value = value.expand(batch_size)
        if tuple(value.shape) != (batch_size,):
            raise ValueError(f"condition '{key}' of method '{method}' has shape {tuple(value.shape)}; "
                             f"expected [B] = [{batch_size}]")
        if not torch.isfinite(value).all():
            raise ValueError(f"condition '{key}' of method '{method}' has non-finite values: {value.tolist()}")
        out[key] = value
    return out


def conditions_from_meta(keys: Sequence[str], meta: Mapping[str, Any], batch_size: int, *,
                         method: str = "method", ids: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The condition values of a batch: each key's label ``meta[key]`` (the dataset items' label of that
    name, collated into ``Batch.meta``) as float32 ``[B]``, checked by :func:`check_conditions`.

    A label the items lack (or hold as None / NaN / a non-scalar) is a one-line ``ValueError``
    naming the key and the item (``ids``: one name per sample, default ``meta["patient_id"]``).
    """
    names = [str(i) for i in (ids if ids is not None else meta.get("patient_id", range(batch_size)))]
    out: dict[str, Any] = {}
    for key in keys:
        values = meta.get(key)
        if values is None or len(values) != batch_size:
            have = [k for k in meta if k != "patient_id"]
            which = names[0] if values is None else f"one of {', '.join(names)}"
            raise ValueError(f"item {which} has no label '{key}', a condition of method '{method}' "
                             f"({_keys_text(keys)}; the items' labels: {', '.join(have) or 'none'})")
        for name, value in zip(names, values):
            try:
                number = None if value is None or isinstance(value, str) else torch.as_tensor(value, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                number = None
            if number is None or number.numel() != 1 or not torch.isfinite(number).all():
                raise ValueError(f"item {name}: label '{key}' (a condition of method '{method}') is {value!r}, "
                                 "not one finite number")
        out[key] = [float(torch.as_tensor(v)) for v in values]
    return check_conditions(keys, out, batch_size, method=method)


def _taking_cond(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(self, source, ...)`` (a translate / outputs_for without ``cond``) that also takes ``cond``:
    ``None`` or ``{}`` only (anything else: the one-line error of :meth:`Method.check_conditions`)."""
    @functools.wraps(fn)
    def call(self: "Method", source: torch.Tensor, *args: Any, cond: Conditions | None = None, **kwargs: Any) -> Any:
        if cond or self.condition_keys:
            self.check_conditions(cond, source.shape[0])
            if self.condition_keys:
                raise ValueError(f"{type(self).__name__}.{fn.__name__} does not take cond, but the method declares "
                                 f"conditions ({', '.join(self.condition_keys)})")
        return fn(self, source, *args, **kwargs)

    return call


# --------------------------------------------------------------------------------------
# Staged methods: parents (frozen models a method is trained on top of)
# --------------------------------------------------------------------------------------
class ParentError(ValueError):
    """A staged method's parents do not match its ``parent_names`` or one cannot be had; one line naming it."""


class Parents(Mapping[str, "Method"]):
    """The read-only ``name -> Method`` map a staged method holds as ``self.parents``.

    Not an ``nn.Module``, so the parents stay outside the child's module tree: not in its
    ``state_dict()`` / ``parameters()`` / checkpoint, untouched by ``.train()``. ``copy.deepcopy``
    (the training loop's EMA copy, an export's cast copy) shares them instead of copying:
    they are frozen. A missing name is a ``KeyError`` saying how parents get attached.
    """

    def __init__(self, parents: Mapping[str, "Method"] | None = None, owner: str = "method") -> None:
        self._parents = dict(parents or {})
        self._owner = owner

    def __getitem__(self, name: str) -> "Method":
        try:
            return self._parents[name]
        except KeyError:
            attached = ", ".join(self._parents) or "none"
            raise KeyError(f"{self._owner} has no parent '{name}' attached (attached: {attached}); "
                           "zoo.resolve / train_or_load / load_translator attach cfg.parents, "
                           "or call attach_parents") from None

    def __iter__(self):
        return iter(self._parents)

    def __len__(self) -> int:
        return len(self._parents)

    def __repr__(self) -> str:
        return f"Parents({', '.join(f'{k}={type(v).__name__}' for k, v in self._parents.items())})"

    def __deepcopy__(self, memo: dict) -> "Parents":
        return self

    def __copy__(self) -> "Parents":
        return self


def check_parent_names(method: str, needed: Sequence[str], given: Iterable[str], optional: Sequence[str] = ()) -> None:
    """One-line :class:`ParentError` unless ``given`` (cfg.parents' names) holds every name of ``needed``
    (parent_names) and nothing beyond ``needed`` and ``optional`` (optional_parent_names)."""
    given = list(given)
    missing = [n for n in needed if n not in given]
    unknown = [n for n in given if n not in needed and n not in optional]
    if missing or unknown:
        parts = ([f"missing parent {', '.join(repr(n) for n in missing)}"] if missing else []) + \
                ([f"unknown parent {', '.join(repr(n) for n in unknown)}"] if unknown else [])
        its = ", ".join([*needed, *(f"{n} (optional)" for n in optional)]) or "none"
        raise ParentError(f"method '{method}': {'; '.join(parts)} (its parents: "
                          f"{its}; set cfg.parents = {{name: parent RunConfig}})")


class Method(nn.Module):
    """Base class. Subclasses set ``self.config`` and implement the three methods below.

    Per-sample conditions: a method that needs labels beside the source image (a curve angle,
    a slice depth) lists them in ``condition_keys``; :meth:`translate` then takes
    ``cond={key: values [B]}`` (checked by :meth:`check_conditions`) and training reads the
    same keys from ``batch.meta`` (:meth:`batch_conditions`). A subclass whose ``translate`` /
    ``outputs_for`` has no ``cond`` parameter is given one that accepts only ``None`` or ``{}``,
    so every method takes the same call and those without conditions are unchanged.
    """

    config: RunConfig
    condition_keys: tuple[str, ...] = ()  # per-sample conditions translate(cond=) needs, e.g. ("uca",); () = none
    parent_names: tuple[str, ...] = ()  # staged methods: the frozen parent runs it needs (cfg.parents' keys); () = none
    optional_parent_names: tuple[str, ...] = ()  # parents it may be given (cddpm / ddpm: "autoencoder", latent mode)
    is_translator: bool = True  # False: translate() takes a measurement, not an image (the ddpm prior:
    #   `medgen sample` refuses it and points to `medgen generate` / `medgen reconstruct`)
    parents: Parents = Parents()  # the attached parents (attach_parents); outside the module tree

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("translate", "outputs_for"):
            fn = cls.__dict__.get(name)
            if callable(fn) and "cond" not in inspect.signature(fn).parameters:
                setattr(cls, name, _taking_cond(fn))

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimiser groups, in the order they are stepped: name -> parameters."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def optim_settings(self) -> dict[str, GroupSettings]:
        """Per-group optimiser settings (:class:`GroupSettings`); a group left out uses ``cfg.train``'s."""
        return {}

    def begin_step(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Called by ``fit()`` once per optimiser step and micro-batch, before any group's training_step.

        Return the batch every group's :meth:`training_step` then receives for this micro-batch.
        A method that must draw once per step and use the draws in every group (UXDiff's
        consistency loss compares two networks on the same ``t`` and ``x_t``) draws them here
        from ``generator`` and returns them with the batch, e.g.
        ``dataclasses.replace(batch, meta={**batch.meta, "t": t, "noise": noise})``, so several
        micro-batches and ranks need no bookkeeping. ``generator`` is seeded by
        ``(seed, step, micro-batch)`` only (a stream of its own, apart from the groups'), so the
        draws are a pure function of the step and a resumed run repeats them exactly; keep
        nothing across steps outside the weights. The default draws nothing and returns ``batch``.
        """
        return batch

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses for optimiser group ``group`` on ``batch``; must contain the scalar ``"loss"``."""
        raise NotImplementedError

    def after_fit(self, batches: Iterable[Batch]) -> None:
        """Called by ``fit()`` once training reaches ``cfg.train.steps``, before the final checkpoint, on the
        raw and on the EMA weights: ``batches`` are the training batches in fit's order from step 0
        (lazy; take what you need). For what needs the trained weights and the data, e.g. the KL
        autoencoder's latent scale (keep it in a buffer: it is saved). The default does nothing.
        """

    def check_conditions(self, cond: Conditions | None, batch_size: int) -> dict[str, torch.Tensor]:
        """``cond`` checked against :attr:`condition_keys` (:func:`check_conditions`): ``{key: float32 [B]}``."""
        return check_conditions(self.condition_keys, cond, batch_size, method=self._method_name())

    def batch_conditions(self, batch: Batch, ids: Sequence[str] | None = None) -> dict[str, torch.Tensor] | None:
        """The conditions of a dataset batch, from its labels (``batch.meta``) with the
        :attr:`condition_keys` names (:func:`conditions_from_meta`); None for a method without keys."""
        if not self.condition_keys:
            return None
        return conditions_from_meta(self.condition_keys, batch.meta, len(batch), method=self._method_name(), ids=ids)

    def _method_name(self) -> str:
        return getattr(getattr(self, "config", None), "method", None) or type(self).__name__

    def attach_parents(self, parents: Mapping[str, "Method"]) -> None:
        """Hold ``parents`` (``name -> trained Method``: every name of :attr:`parent_names`, plus any of
        :attr:`optional_parent_names`) frozen as ``self.parents``.

        Each parent is put in eval mode with ``requires_grad=False`` (gradients still flow
        *through* it into this method's own parameters) and kept outside the module tree (see
        :class:`Parents`). The parents are moved to this method's device now and on every later
        ``.to()`` / ``.cuda()`` / ``.cpu()`` (:meth:`_apply`); they keep their own dtype. A name
        missing or unknown is a one-line :class:`ParentError`. ``zoo.resolve``, ``train_or_load``
        and ``load_translator`` call this with the parents they resolved from ``cfg.parents``.
        """
        name = getattr(getattr(self, "config", None), "method", None) or type(self).__name__
        check_parent_names(name, self.parent_names, parents, self.optional_parent_names)
        for parent in parents.values():
            parent.eval()
            parent.requires_grad_(False)
        names = [n for n in (*self.parent_names, *self.optional_parent_names) if n in parents]
        self.parents = Parents({n: parents[n] for n in names}, owner=f"method '{name}'")
        self._move_parents()

    def _move_parents(self) -> None:
        """Move the parents to the device of this method's own first parameter / buffer (if it has any)."""
        if not self.parents:
            return
        own = next(iter(self.parameters()), None)
        own = own if own is not None else next(iter(self.buffers()), None)
        if own is not None:
            for parent in self.parents.values():
                parent.to(own.device)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "Method":
        """``nn.Module._apply`` (behind ``.to()``, ``.cuda()``, ``.half()`` ...), then the parents follow the device."""
        out = super()._apply(fn, recurse)
        self._move_parents()
        return out

    @torch.no_grad()
    def outputs_for(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                    cond: Conditions | None = None) -> torch.Tensor:
        """What the method produces for a dataset batch ``source [B, C_s, *S]``: ``[B, C_t, *S]``.

        Translators translate it (the default; ``cond`` as for :meth:`translate`); an
        unconditional generator ignores the values and generates ``B`` images. Used by the
        training loop's sample grids and by the fp16-export check, which must not care which
        kind of method they hold.
        """
        return self.translate(source, generator=generator, cond=cond)

    @torch.no_grad()
    def translate(
        self,
        source: torch.Tensor,
        *,
        cond: Conditions | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        **options,
    ) -> torch.Tensor:
        """Map a source batch ``[B, C_s, *S]`` (model range) to a target batch ``[B, C_t, *S]``.

        ``cond``: ``{key: values [B]}`` for every key of :attr:`condition_keys` (see
        :meth:`check_conditions`; None for a method without keys). ``options`` override the
        sampling config for this call (``sampler``, ``steps``, ``eta``, ``guidance_scale``);
        ``callback`` receives a dict per sampling step.
        """
        raise NotImplementedError
