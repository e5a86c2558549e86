"""medgen.data.writers: the CLI's dataset exporter writes cells the manifest reader reads back,
and the writers' old import paths keep working."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medgen.cli import main
from medgen.config import apply_overrides, get_preset
from medgen.data import manifest, writers
from medgen.data.manifest import read_manifest
from medgen.data.phantoms.base import TEST_OFFSET

MULTI_DEPTH = ["--set", "data.phantom=spine_coronal", "--set", "data.source=us_vpi", "--set", "data.target=xray"]


def test_cli_item_export_joins_the_files_of_one_cell_with_the_readers_separator(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``medgen phantoms multi_depth``: the 5 ultrasound depths of a row are one cell ``a|b|c|d|e``
    that :meth:`Manifest.load` stacks back to ``[5, H, W]`` (the bug was ``a;b;...``: one missing file)."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.registry import DATASETS

    out = tmp_path / "md"
    assert main(["phantoms", "multi_depth", "--preset", "ci", *MULTI_DEPTH, "--n", "2", "--out", str(out)]) == 0
    assert "wrote 2 multi_depth pairs (test split)" in capsys.readouterr().out
    m = read_manifest(out / "manifest.csv")
    cell = m.cell(0, "source")
    assert cell.count(manifest.SEP) == 4 and ";" not in cell and writers.SEP is manifest.SEP
    loaded = m.load(0, "source")
    cfg = apply_overrides(get_preset("ci"), MULTI_DEPTH[1::2])
    data = replace(cfg.data, dataset="multi_depth", n_test=max(2, cfg.data.n_test))
    item = DATASETS["multi_depth"](data, "test")[0]
    assert loaded.shape == tuple(item["source"].shape) and loaded.shape[0] == 5
    np.testing.assert_allclose(loaded, (item["source"].numpy() + 1.0) / 2.0, atol=0.5 / 255 + 1e-6)  # 8-bit PNGs
    assert m.load(0, "target").shape == tuple(item["target"].shape[1:])  # one channel: one file, [H, W]
    assert m.labels(0)["cobb"] == pytest.approx(float(item["cobb"]), rel=1e-6)


def test_old_import_paths_and_subject_numbers() -> None:
    from medgen.data.manifest import write_phantom_dataset, write_split_manifests

    assert write_phantom_dataset is writers.write_phantom_dataset
    assert write_split_manifests is writers.write_split_manifests
    with pytest.raises(AttributeError):
        manifest.write_everything  # noqa: B018
    assert writers.subject_numbers("train", 3) == [0, 1, 2]
    assert writers.subject_numbers("test", 2) == [TEST_OFFSET, TEST_OFFSET + 1]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        writers.subject_numbers("val", 1)
