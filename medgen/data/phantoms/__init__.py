"""Seeded simulators of the papers' anatomies (one module per anatomy; see ``base.py``).

Importing this package registers every phantom in :data:`medgen.registry.PHANTOMS`:

>>> from medgen.registry import PHANTOMS, lookup
>>> spec = lookup(PHANTOMS, "knee")                      # doctest: +SKIP
>>> arrays = spec([0, 1], seed=0, sizes="ci", kl_grade=3)  # doctest: +SKIP
"""
import importlib

from medgen.data.phantoms.base import (Control, Modality, PhantomError, PhantomSpec, Sizes,
                                       register_phantom, subject_rng)

ANATOMIES = ("spine_coronal", "spine_sagittal", "knee", "lung")

for _name in ANATOMIES:  # a module still being written must not break the others
    try:
        importlib.import_module(f"medgen.data.phantoms.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"medgen.data.phantoms.{_name}":
            raise

__all__ = ["ANATOMIES", "Control", "Modality", "PhantomError", "PhantomSpec", "Sizes",
           "register_phantom", "subject_rng"]
