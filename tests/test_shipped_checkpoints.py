"""The shipped checkpoints (checkpoints/): they load, are small, and still match their presets."""
import json
from pathlib import Path

import pytest
import torch

from medgen.checkpoint import load_translator
from medgen.config import get_preset
from medgen.presets import mri_to_ct

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = sorted(p.parent for p in ROOT.glob("*/*/config.json"))
MAX_BYTES = 20 * 2**20


def _preset_for(folder: Path):
    """The cpu preset the folder's name says it was trained from (``<model>[-<contrast>]``)."""
    model, _, contrast = folder.name.partition("-")
    cfg = get_preset("cpu", task=mri_to_ct.task(model))
    return mri_to_ct.for_contrast(cfg, contrast) if contrast else cfg


def test_the_demo_checkpoints_are_there():
    names = {p.name for p in SHIPPED}
    assert {"ddim_image-t1w", "ddim_image-t2w", "pix2pix_unet-t1w", "pix2pix_unet-t2w"} <= names


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoint_loads_is_small_and_matches_its_preset(folder):
    assert sum(f.stat().st_size for f in folder.iterdir()) <= MAX_BYTES
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["export"]["dtype"] == "float16"
    assert manifest["export"]["output_psnr_db"] >= 40.0
    cfg = _preset_for(folder)
    model = load_translator(folder, config=cfg)          # raises if the config drifted from the preset
    size = cfg.data.image_size
    src = torch.zeros(1, 1, size, size)
    out = model.translate(src, generator=torch.Generator().manual_seed(0), steps=2)
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()
