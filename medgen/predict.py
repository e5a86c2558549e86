"""Translate a dataset with a model: :func:`predict` -> :class:`Predictions` (outputs + per-sample metadata).

Predicting is separate from scoring (:func:`medgen.score.score`) so that one set of
translations can be scored several ways (Table 1 metrics, then segmented for Dice), shown
in a figure, or saved, without translating twice. :func:`medgen.evaluate.evaluate` is the
composition of the two.

Batches are taken in dataset order and one ``generator`` is shared by all of them, so a fixed
seed gives every model the same sequence of ``x_T`` draws. A model that declares per-sample
conditions (``model.condition_keys``, e.g. ``("uca",)``) gets each item's label of that name
as ``translate(..., cond={"uca": tensor [B]})``; an item without it is a one-line error.

Every prediction carries the out-of-distribution guard (:mod:`medgen.ood`): a data set whose
modality (phantom / manifest unit, or an item's ``modality``) differs from the one the model was
trained on is refused in one line unless ``allow_modality_mismatch=True``, and
``Predictions.ood`` holds one :class:`~medgen.ood.Verdict` per sample ("within / outside the
training distribution (score s, threshold t)"; "not assessed" for a model without calibration).

>>> from medgen.predict import predict
>>> preds = predict(model, test_set, seed=0, steps=20)      # doctest: +SKIP
>>> preds.outputs.shape                                     # doctest: +SKIP
torch.Size([32, 1, 64, 64])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from medgen import progress as status
from medgen.data.batch import Batch, collate
from medgen.methods.base import conditions_from_meta

__all__ = ["Predictions", "predict", "batches", "stack", "conditions"]


@dataclass
class Predictions:
    """Translations of a dataset, in dataset order.

    ``outputs`` ``[N, C_t, *S]`` (CPU, float32); ``patient_ids`` and ``index`` (dataset indices)
    one per sample; ``method`` the translating method's name when it has one; ``options`` the
    sampling options used; ``ood`` one :class:`medgen.ood.Verdict` per sample (None when
    ``predict(..., ood=False)``); ``ood_notes`` the modality check's notes.
    """

    outputs: torch.Tensor
    patient_ids: list[str]
    index: list[int]
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    ood: list[Any] | None = None
    ood_notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.outputs.shape[0])

    def ood_lines(self) -> list[str]:
        """:func:`medgen.ood.verdict_line` of every sample (empty without verdicts)."""
        return [v.line() for v in self.ood or []]


def batches(dataset: Any, batch_size: int) -> Iterator[tuple[int, Batch]]:
    """``(first_index, Batch)`` over ``dataset`` (a Dataset or a list of item dicts) in index order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield start, collate([dataset[i] for i in range(start, stop)])


def stack(dataset: Any, key: str) -> torch.Tensor:
    """``dataset[i][key]`` of every item stacked: ``[N, C, *S]`` (e.g. the targets a prediction is scored against)."""
    return torch.stack([torch.as_tensor(dataset[i][key]) for i in range(len(dataset))])


def _device_of(model: Any) -> torch.device | None:
    """Device of the model's first parameter or buffer, if it has any."""
    if isinstance(model, torch.nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
    return None


def conditions(model: Any, batch: Batch, dataset: Any = None, start: int = 0) -> dict[str, torch.Tensor] | None:
    """``{key: float32 [B]}``: the labels of ``batch`` (dataset items ``start ..``) named by
    ``model.condition_keys``; None when the model declares none. An item without such a label
    (or with a non-numeric one) is a one-line ``ValueError`` naming the key and the item."""
    keys = tuple(getattr(model, "condition_keys", ()) or ())
    if not keys:
        return None
    n = len(batch)
    pids = batch.meta.get("patient_id")
    names = [f"{start + i}" + (f" ({pids[i]})" if pids is not None and len(pids) == n else "") for i in range(n)]
    method = getattr(getattr(model, "config", None), "method", None) or type(model).__name__
    for key in keys:
        if len(batch.meta.get(key, ())) != n:
            first = next((i for i in range(n) if dataset is not None and key not in dataset[start + i]), 0)
            raise ValueError(f"predict: dataset item {names[first]} has no label '{key}', a condition of method "
                             f"'{method}' (its conditions: {', '.join(keys)})")
    return conditions_from_meta(keys, batch.meta, n, method=method, ids=names)


def _translate(model: Any, source: torch.Tensor, slicewise: bool, batch_size: int,
               generator: torch.Generator | None, options: Mapping[str, Any],
               cond: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``model.translate`` of ``source [B, C, *S]`` (with ``cond`` ``{key: [B]}`` when given); with
    ``slicewise`` a 2D model runs on every sagittal slice of each volume ``[C, D, H, W]`` (``batch_size``
    slices at a time, each with its volume's conditions) -> ``[B, C_t, D, H, W]``."""
    if not slicewise:
        extra = {} if cond is None else {"cond": {k: v.to(source.device) for k, v in cond.items()}}
        return model.translate(source, generator=generator, **extra, **options)
    if source.ndim != 5:
        raise ValueError(f"predict: slicewise needs volumes [B, C, D, H, W], got {tuple(source.shape)}")
    out = []
    for b, volume in enumerate(source):
        slices = volume.permute(1, 0, 2, 3)  # [D, C, H, W]

        def extra(n: int) -> dict[str, Any]:
            return {} if cond is None else {"cond": {k: v[b].expand(n).to(source.device) for k, v in cond.items()}}

        parts = [model.translate(slices[s:s + batch_size], generator=generator,
                                 **extra(len(slices[s:s + batch_size])), **options).float().cpu()
                 for s in range(0, len(slices), batch_size)]
        out.append(torch.cat(parts).permute(1, 0, 2, 3))  # [C_t, D, H, W]
    return torch.stack(out)


def _modality_notes(model: Any, dataset: Any, allow: bool) -> tuple[list[str], str]:
    """The modality guard of :func:`predict`: ``(notes, data set modality)``; a data set whose phantom /
    manifest modality differs from the model's is one ``ModalityMismatchError`` line (unless ``allow``)."""
    from medgen import ood as guard
    from medgen.config import DataConfig, RunConfig

    cfg, data = getattr(model, "config", None), getattr(dataset, "cfg", None)
    if not isinstance(cfg, RunConfig) or not isinstance(data, DataConfig):
        return [], ""
    code = guard.data_modality(data, getattr(dataset, "source_keys", None))
    name = str(guard.checkpoint_folder(model) or cfg.name)
    where = f"{data.phantom or data.manifest or data.dataset} source {data.source}"
    note = guard.check_modality(code, cfg, allow=allow, how=where, model=name,
                                override="allow_modality_mismatch=True", what="the data set")
    return ([note] if note else []), code


def _item_modalities(model: Any, batch: Batch, default: str, allow: bool, notes: list[str]) -> list[str]:
    """Per-item modality (an item's ``modality`` label, else ``default``), each new one checked."""
    from medgen import ood as guard

    n = len(batch)
    given = batch.meta.get("modality")
    mods = [str(m) for m in given] if isinstance(given, (list, tuple)) and len(given) == n else [default] * n
    cfg = getattr(model, "config", None)
    for m in dict.fromkeys(mods):
        if m != default and cfg is not None:
            note = guard.check_modality(m, cfg, allow=allow, how="item label 'modality'",
                                        model=str(guard.checkpoint_folder(model) or cfg.name),
                                        override="allow_modality_mismatch=True", what="a data set item")
            if note and note not in notes:
                notes.append(note)
    return mods


def predict(model: Any, dataset: Any, *, batch_size: int = 16, generator: torch.Generator | None = None,
            seed: int | None = None, slicewise: bool = False, progress: bool = False, ood: Any = True,
            allow_modality_mismatch: bool = False, **options: Any) -> Predictions:
    """Translate every item of ``dataset`` with ``model`` (eval mode during the call).

    ``dataset[i]`` is a dict with ``source`` ``[C_s, *S]`` and optionally ``patient_id``;
    ``model.translate(source [B, C_s, *S], generator=, **options) -> [B, C_t, *S]``; a model with
    ``condition_keys`` also gets ``cond={key: [B]}`` from the items' labels of those names
    (:func:`conditions`; a missing label is a one-line error naming the key and the item).
    ``generator`` (or ``seed``, which makes one) is shared by all batches. ``slicewise=True``
    runs a 2D model on every sagittal slice of volume items ``[C_s, D, H, W]`` (one volume per
    batch, ``batch_size`` slices at a time). ``options`` (sampler, steps, eta, guidance_scale)
    go to ``translate``.

    Out-of-distribution guard (:mod:`medgen.ood`): a data set (its ``cfg`` phantom / manifest:
    checked before anything is translated) or an item (a ``modality`` label: checked with its
    batch) of another modality than the model's training data is a one-line
    :class:`~medgen.ood.ModalityMismatchError` unless
    ``allow_modality_mismatch=True``; each sample's source (volumes: the middle slice) gets a
    :class:`~medgen.ood.Verdict` in ``Predictions.ood`` from the model's checkpoint calibration
    (``ood=`` a :class:`~medgen.ood.Guard` to use another one; ``ood=False`` skips the scores).
    Computing them draws no random numbers.
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    device = _device_of(model)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    outputs, ids, index = [], [], []
    notes, modality = _modality_notes(model, dataset, allow_modality_mismatch)
    verdicts: list[Any] | None = None if ood is False else []
    it = batches(dataset, 1 if slicewise else batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=-(-len(dataset) // (1 if slicewise else batch_size)), desc="predict", unit="batch")
    name = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
    n_batches = -(-len(dataset) // (1 if slicewise else batch_size))
    try:
        for k, (start, batch) in enumerate(it):
            status.report(f"sampling {name}: batch {k + 1} / {n_batches} ({len(dataset)} items)",
                          phase=f"predict {name}")
            batch = batch if device is None else batch.to(device)
            mods = _item_modalities(model, batch, modality, allow_modality_mismatch, notes)
            if verdicts is not None:
                from medgen import ood as guard

                verdicts += guard.assess(model if ood is True else ood, batch.source, modality=mods, notes=notes)
            cond = conditions(model, batch, dataset, start)
            pred = _translate(model, batch.source, slicewise, batch_size, generator, options, cond)
            outputs.append(pred.detach().float().cpu())
            n = len(batch)
            ids += [str(p) for p in batch.meta.get("patient_id", [str(start + i) for i in range(n)])]
            index += list(range(start, start + n))
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    if not outputs:
        raise ValueError("predict: the dataset is empty")
    method = getattr(getattr(model, "config", None), "method", None)
    return Predictions(torch.cat(outputs), ids, index, method, dict(options), verdicts, notes)
