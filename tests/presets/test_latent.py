"""quickstart_latent presets: four budgets per task; the cDDPM names the autoencoder preset of its budget as its
parent, its UNet works on that autoencoder's latents, and every image size is divisible by its factor."""
import dataclasses

import pytest

import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import config_hash, from_json, get_preset, tasks, to_json
from medgen.nn.autoencoder import downsampling_factor
from medgen.presets import latent as p
from medgen.registry import METHODS, lookup

PRESETS = ("ci", "smoke", "cpu", "paper")


def test_tasks_registered_with_four_presets():
    assert set(p.TASKS) <= set(tasks())
    for task in p.TASKS:
        for preset in PRESETS:
            cfg = get_preset(preset, task=task)
            assert (cfg.name, cfg.preset) == (task, preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_cddpm_runs_on_the_latents_of_its_parent(preset):
    cfg, ae = get_preset(preset, task=p.CDDPM), get_preset(preset, task=p.AUTOENCODER)
    assert cfg.method == "cddpm" and ae.method == "autoencoder_kl"
    assert cfg.parents == {"autoencoder": ae}  # the registered autoencoder preset: one cache entry for both
    z = ae.options.latent_channels
    assert cfg.model.in_channels == cfg.model.out_channels == cfg.model.cond_image_channels == z
    assert cfg.diffusion.latent_condition == "encode"
    assert ae.data.source == ae.data.target == "target" and cfg.data.image_size == ae.data.image_size
    assert cfg.data.image_size % downsampling_factor(ae.model) == 0
    assert from_json(to_json(cfg)) == cfg and config_hash(from_json(to_json(cfg))) == config_hash(cfg)
    if preset in ("ci", "smoke"):  # the paper-size networks are not built here (tens of millions of parameters)
        lookup(METHODS, cfg.method)(cfg)
        lookup(METHODS, ae.method)(ae)


def test_a_changed_autoencoder_changes_the_cddpm_hash():
    cfg = get_preset("ci", task=p.CDDPM)
    ae = cfg.parents["autoencoder"]
    other = dataclasses.replace(cfg, parents={"autoencoder": dataclasses.replace(ae, seed=1)})
    assert config_hash(other) != config_hash(cfg)
