"""Image keys of a dataset config: ``"t1w, t2w"`` -> keys; ``"us_vpi[2]"`` / ``"us_vpi[optimal_depth]"``
-> ``("us_vpi", selector)``, which picks one ``[H, W]`` image of a ``[K, H, W]`` stack (a fixed index,
or the subject's own integer label).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from medgen.data.datasets.common import DatasetError

_KEY = re.compile(r"^([^\[\],]+?)\s*(?:\[\s*([^\[\],]+?)\s*\])?$")  # "us_vpi" or "us_vpi[optimal_depth]"


def _parse_keys(text: str) -> list[str]:
    """``"t1w, t2w"`` -> ``["t1w", "t2w"]`` (empty entries dropped)."""
    return [k.strip() for k in text.split(",") if k.strip()]


def _split_key(key: str) -> tuple[str, str | None]:
    """``"us_vpi[optimal_depth]"`` -> ``("us_vpi", "optimal_depth")``; ``"ct"`` -> ``("ct", None)``."""
    m = _KEY.match(key)
    if m is None:
        raise DatasetError(f"bad image key '{key}' (use 'name' or 'name[index]' / 'name[label]')")
    return m.group(1), m.group(2)



def select_image(raw: dict[str, Any], key: str, spec: tuple[str, str | None], where: Callable[[], str]) -> np.ndarray:
    """The physical-unit image of ``key`` (parsed as ``spec = (base, selector)``) in a raw record:
    the whole array ``raw[base]``, or with a selector its image ``[H, W]`` of a ``[K, H, W]`` stack.
    ``where()`` names the record source in errors."""
    base, sel = spec
    arr = np.asarray(raw[base])
    if sel is None:
        return arr
    if re.fullmatch(r"-?\d+", sel):
        idx = int(sel)
    elif sel in raw and np.ndim(raw[sel]) == 0:
        idx = int(np.asarray(raw[sel]))
    else:
        raise DatasetError(f"image key '{key}': '{sel}' is neither an index nor a scalar label of "
                           f"{where()}")
    if arr.ndim != 3 or not -arr.shape[0] <= idx < arr.shape[0]:
        raise DatasetError(f"image key '{key}': cannot take image {idx} of shape {arr.shape}")
    return arr[idx]
