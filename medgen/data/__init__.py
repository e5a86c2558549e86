"""Data: the Batch type, patient-level splits and the registered datasets (importing registers them)."""
from medgen.data import phantoms  # noqa: F401  (registers the anatomies in registry.PHANTOMS)
from medgen.data import toy  # noqa: F401  (registers "toy_shapes")
from medgen.data import datasets  # noqa: F401  (registers paired, unpaired, multi_depth, volume_slices, volume)
from medgen.data.batch import Batch, collate
from medgen.data.splits import check_disjoint, patient_split, split_hash

__all__ = ["Batch", "collate", "check_disjoint", "patient_split", "split_hash", "toy"]
