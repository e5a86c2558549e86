"""medgen.config: presets, JSON round trip, overrides, misspelled keys and type errors."""
from __future__ import annotations

import dataclasses
import json

import pytest

from medgen import config as C
from medgen import config_checks as V
from medgen.config import ConfigError, RunConfig

from assertions import raises_one_line  # noqa: E402


def all_presets() -> list[tuple[str, str]]:
    """Every registered (task, preset) pair."""
    return [(task, preset) for task in C.tasks() for preset in C.PRESET_NAMES]


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
def test_quickstart_has_the_four_presets() -> None:
    assert "quickstart" in C.tasks()
    for preset in C.PRESET_NAMES:
        cfg = C.get_preset(preset, task="quickstart")
        assert isinstance(cfg, RunConfig)
        assert cfg.preset == preset and cfg.name == "quickstart"


@pytest.mark.parametrize(("task", "preset"), all_presets())
def test_preset_is_consistent(task: str, preset: str) -> None:
    cfg = C.get_preset(preset, task=task)
    assert cfg.preset == preset and cfg.name == task
    assert len(cfg.model.attention_levels) == len(cfg.model.channels)
    assert all(ch % cfg.model.norm_groups == 0 for ch in cfg.model.channels)
    assert cfg.train.batch_size % cfg.train.grad_accum == 0
    assert cfg.train.steps > 0 and cfg.sample.steps > 0


def test_presets_grow_with_budget() -> None:
    sizes = [C.get_preset(p).train.steps for p in C.PRESET_NAMES]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert C.get_preset("ci").data.image_size <= C.get_preset("paper").data.image_size


def test_unknown_preset_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'smok'.*did you mean 'smoke'") as info:
        C.get_preset("smok")
    assert "\n" not in str(info.value)


def test_unknown_task_is_one_line() -> None:
    with pytest.raises(ConfigError, match="quickstart") as info:
        C.get_preset("ci", task="quickstrat")
    assert "\n" not in str(info.value)


def test_register_presets_requires_all_four() -> None:
    with pytest.raises(ConfigError, match=r"lacks presets \['cpu', 'paper'\]"):
        C.register_presets("incomplete_task", {"ci": RunConfig(), "smoke": RunConfig()})
    assert "incomplete_task" not in C.tasks()


def test_configs_are_frozen() -> None:
    cfg = C.get_preset("ci")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# JSON round trip and hashing
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "preset"), all_presets())
def test_json_round_trip(task: str, preset: str) -> None:
    cfg = C.get_preset(preset, task=task)
    again = C.from_json(C.to_json(cfg))
    assert again == cfg
    assert isinstance(again.model.channels, tuple) and isinstance(again.train.betas, tuple)
    assert C.config_hash(again) == C.config_hash(cfg)


def test_json_is_sorted_and_plain() -> None:
    data = json.loads(C.to_json(C.get_preset("ci")))
    assert list(data) == sorted(data)
    assert data["model"]["channels"] == list(C.get_preset("ci").model.channels)


def test_hash_changes_with_any_field() -> None:
    cfg = C.get_preset("ci")
    assert C.config_hash(C.apply_overrides(cfg, ["train.lr=0.1"])) != C.config_hash(cfg)
    assert C.config_hash(C.apply_overrides(cfg, ["seed=1"])) != C.config_hash(cfg)
    assert len(C.config_hash(cfg)) == 12


def test_fields_omitted_at_default_keep_old_hashes() -> None:
    """Fields marked OMIT_AT_DEFAULT (added after checkpoints shipped) change the hash only when set;
    the literals are the hashes these configs had before any such field existed."""
    cfg = C.get_preset("ci")
    assert C.config_hash(C.RunConfig()) == "3b7f59243a53"
    assert C.config_hash(cfg) == "42bf47e23997"
    assert "time_embedding" in C.to_dict(cfg)["model"] and "time_embedding" not in C.hash_dict(cfg)["model"]
    for override in ("model.time_embedding=false", "data.image_height=32"):
        assert C.config_hash(C.apply_overrides(cfg, [override])) != C.config_hash(cfg)


def test_from_dict_rejects_unknown_nested_key() -> None:
    data = C.to_dict(C.get_preset("ci"))
    data["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.learning_rate'"):
        C.from_dict(data)


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    cfg = C.from_dict({"method": "cddpm", "train": {"steps": 7}})
    assert cfg.train.steps == 7 and cfg.train.lr == RunConfig().train.lr


# --------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------
def test_overrides_parse_types() -> None:
    cfg = C.apply_overrides(C.get_preset("ci"), [
        "train.steps=3", "train.lr=1e-3", "train.amp=true", "sample.sampler=ddpm",
        "model.channels=(4, 8)", "model.attention_levels=[false, true]", "train.betas=(0.5,0.9)",
        "seed = 5",
    ])
    assert cfg.train.steps == 3 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.amp is True and cfg.sample.sampler == "ddpm"
    assert cfg.model.channels == (4, 8) and cfg.model.attention_levels == (False, True)
    assert cfg.train.betas == (0.5, 0.9) and cfg.seed == 5


def test_overrides_from_mapping_and_int_to_float() -> None:
    cfg = C.apply_overrides(C.get_preset("ci"), {"train.lr": 1, "data.n_test": 4.0})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.data.n_test == 4 and isinstance(cfg.data.n_test, int)


def test_overrides_leave_original_untouched() -> None:
    cfg = C.get_preset("ci")
    C.apply_overrides(cfg, ["train.steps=99"])
    assert C.get_preset("ci").train.steps == cfg.train.steps != 99


@pytest.mark.parametrize(("override", "suggestion"), [
    ("train.stesp=3", "train.steps"),
    ("trian.steps=3", "train"),
    ("sample.sampeler=ddim", "sample.sampler"),
    ("diffusion.predction=x0", "diffusion.prediction"),
])
def test_misspelled_key_suggests(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'") as info:
        C.apply_overrides(C.get_preset("ci"), [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("train.steps=abc", r"train\.steps: expected an integer, got 'abc'"),
    ("train.steps=1.5", r"train\.steps: expected an integer"),
    ("train.lr=fast", r"train\.lr: expected a number"),
    ("train.amp=1", r"train\.amp: expected true/false"),
    ("sample.sampler=3", r"sample\.sampler: expected a string"),
    ("train.betas=(0.9,)", r"train\.betas: expected 2 values, got 1"),
    ("model.channels=8", r"model\.channels: expected a list"),
    ("train=3", r"'train' is a section"),
    ("seed.x=1", r"has no sub-key 'x'"),
    ("train.steps", r"not of the form key=value"),
])
def test_override_type_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        C.apply_overrides(C.get_preset("ci"), [override])
    assert "\n" not in str(info.value)


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------------
# Typed method options (RunConfig.options) and the legacy `gan` section
# --------------------------------------------------------------------------------------
def _pix2pix() -> RunConfig:
    return C.get_preset("cpu", task="mri_to_ct/pix2pix_unet")


def test_each_gan_method_registers_its_options() -> None:
    from medgen.methods.cut import CUTOptions
    from medgen.methods.pix2pix import Pix2PixOptions
    from medgen.methods.syndiff import SynDiffOptions

    assert C.options_class("pix2pix") is Pix2PixOptions and C.options_class("cut") is CUTOptions
    assert C.options_class("syndiff") is SynDiffOptions and C.options_class("cddpm") is None
    assert isinstance(_pix2pix().options, Pix2PixOptions) and C.get_preset("ci").options is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        _pix2pix().options.lambda_l1 = 1.0  # type: ignore[misc]


def test_old_config_json_with_a_gan_section_loads_into_the_options() -> None:
    from pathlib import Path

    old = json.loads((Path(__file__).parents[1] / "checkpoints/mri_to_ct/pix2pix_unet-t1w/config.json").read_text())
    assert "gan" in old and "options" not in old
    cfg = C.from_dict(old)
    assert cfg == dataclasses.replace(_pix2pix(), data=dataclasses.replace(_pix2pix().data, source="t1w"))
    assert "gan" not in C.to_dict(cfg) and C.to_dict(cfg)["options"]["lambda_l1"] == 10.0
    legacy_cddpm = {**C.to_dict(C.get_preset("ci")), "gan": {"lambda_l1": 3.0}}
    del legacy_cddpm["options"]
    assert C.from_dict(legacy_cddpm) == C.get_preset("ci")  # a method that never read `gan`: dropped
    with pytest.raises(ConfigError, match="gan: an old 'gan' section and 'options' both given"):
        C.from_dict({**C.to_dict(_pix2pix()), "gan": {}})
    with pytest.raises(ConfigError, match=r"gan\.lambda_l1: expected a number"):
        C.from_dict({**{k: v for k, v in old.items()}, "gan": {**old["gan"], "lambda_l1": "x"}})


def test_options_keep_the_old_config_hashes() -> None:
    """The hash renders options as the old `gan` section: every preset, GAN or not, kept its hash
    (the shipped checkpoints and every cached run still match)."""
    assert C.config_hash(_pix2pix()) == "ff0c99b0e006"  # = before options existed (gan=GANConfig(...))
    assert C.config_hash(C.get_preset("ci", task="mri_to_ct/cut_resnet")) == "9f221084e09f"
    assert C.config_hash(C.get_preset("ci", task="mri_to_ct/syndiff")) == "c722db70eef9"
    none = dataclasses.replace(_pix2pix(), options=None)  # None: the method's defaults
    defaults = dataclasses.replace(_pix2pix(), options=type(_pix2pix().options)())
    assert C.config_hash(none) == C.config_hash(defaults)
    assert C.config_hash(C.apply_overrides(_pix2pix(), ["options.lr_d=1e-4"])) != C.config_hash(_pix2pix())


def test_options_fields_outside_the_legacy_section_count_in_the_hash() -> None:
    @C.register_options("test_options_only")
    @dataclasses.dataclass(frozen=True)
    class Extra(C.MethodOptions):
        alpha: float = 1.0  # a setting the old `gan` section never had

        def __post_init__(self) -> None:
            self.check("alpha", self.alpha > 0, "must be > 0")

    cfg = C.from_dict({"method": "test_options_only"})
    assert cfg.options == Extra() and C.hash_dict(cfg)["options"] == {"alpha": 1.0}
    assert C.config_hash(C.apply_overrides(cfg, ["options.alpha=2"])) != C.config_hash(cfg)
    with pytest.raises(ConfigError, match=r"^test_options_only.alpha: must be > 0, got -1.0$"):
        C.apply_overrides(cfg, ["options.alpha=-1"])
    assert C.from_json(C.to_json(cfg)) == cfg


def test_set_options_and_method() -> None:
    cfg = C.apply_overrides(_pix2pix(), ["options.lambda_l1=2", "options.gan_loss=vanilla"])
    assert (cfg.options.lambda_l1, cfg.options.gan_loss) == (2.0, "vanilla")
    cut = C.apply_overrides(_pix2pix(), ["method=cut", "options.lambda_nce=2"])
    assert type(cut.options).__name__ == "CUTOptions" and cut.options.lambda_nce == 2.0
    assert C.apply_overrides(cut, ["method=cddpm"]).options is None
    assert C.apply_overrides(C.get_preset("ci"), ["method=pix2pix"]).options == type(_pix2pix().options)()


@pytest.mark.parametrize(("override", "message"), [
    ("options.lambda_l1=-1", r"^pix2pix\.lambda_l1: must be >= 0, got -1\.0$"),
    ("options.lambda_l1=abc", r"options\.lambda_l1: expected a number, got 'abc'"),
    ("options.lamda_l1=1", r"unknown config key 'options\.lamda_l1'; did you mean 'options\.lambda_l1'"),
    ("options=3", r"'options' is a section"),
    ("gan.lambda_l1=5", r"'gan' is gone.*options\.<field>"),
])
def test_options_override_errors_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        C.apply_overrides(_pix2pix(), [override])
    assert "\n" not in str(info.value)


def test_a_method_without_options_takes_none() -> None:
    with pytest.raises(ConfigError, match="method 'cddpm' takes no options"):
        C.apply_overrides(C.get_preset("ci"), ["options.lambda_l1=1"])
    with pytest.raises(ConfigError, match="options: method 'cddpm' takes no options, got lambda_l1"):
        C.from_dict({"method": "cddpm", "options": {"lambda_l1": 1.0}})
    from medgen.methods.pix2pix import Pix2Pix

    with pytest.raises(ConfigError, match="options: method 'pix2pix' takes Pix2PixOptions, got CUTOptions"):
        Pix2Pix(dataclasses.replace(_pix2pix(), options=C.get_preset("ci", task="mri_to_ct/cut_resnet").options))


# --------------------------------------------------------------------------------------
# Validation at construction (RunConfig.__post_init__ -> config.validate)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.steps=-1", "train.steps: must be >= 0, got -1"),
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("train.lr=0", "train.lr: must be > 0, got 0.0"),
    ("train.grad_accum=3", "train.grad_accum: must divide train.batch_size=8, got 3"),
    ("train.betas=(0.9, 1.0)", "train.betas: must be in [0, 1), got 1.0"),
    ("train.ema_decay=1", "train.ema_decay: must be in [0, 1), got 1.0"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("train.lr_schedule=linear", "train.lr_schedule: must be one of 'constant', 'cosine'"),
    ("train.ckpt_every=-2", "train.ckpt_every: must be >= 0, got -2"),
    ("data.image_size=4", "data.image_size: must be >= 8, got 4"),
    ("data.image_height=4", "data.image_height: must be 0 (the data's aspect ratio) or >= 8, got 4"),
    ("data.n_train=-1", "data.n_train: must be >= 0, got -1"),
    ("data.test_fraction=1", "data.test_fraction: must be in [0, 1), got 1.0"),
    ("data.window=brain", "data.window: must be one of '', 'soft_tissue', 'lung', 'bone'"),
    ("data.augment=flip+rotate", "data.augment: names an unknown recipe 'rotate'"),
    ("data.registration=three", "data.registration: must be one of '', 'one', 'two'"),
    ("data.dataset=", "data.dataset: must be a non-empty name"),
    ("model.spatial_dims=4", "model.spatial_dims: must be one of 2, 3, got 4"),
    ("model.channels=[16, 0]", "model.channels: must be >= 1, got 0"),
    ("model.dropout=1", "model.dropout: must be in [0, 1), got 1.0"),
    ("model.skip_mode=sum", "model.skip_mode: must be one of 'concat', 'add'"),
    ("model.mid_attention=always", "model.mid_attention: must be one of 'auto', 'on', 'off'"),
    ("diffusion.schedule=cosin", "diffusion.schedule: must be one of 'linear', 'scaled_linear', 'cosine' "
                                 "(did you mean 'cosine'?), got 'cosin'"),
    ("diffusion.prediction=epsilon", "diffusion.prediction: must be one of 'eps', 'x0', 'v'"),
    ("diffusion.timesteps=0", "diffusion.timesteps: must be >= 1, got 0"),
    ("diffusion.beta_end=0.00001", "diffusion.beta_end: must be >= diffusion.beta_start=0.0001"),
    ("diffusion.cond_drop_prob=1.5", "diffusion.cond_drop_prob: must be in [0, 1], got 1.5"),
    ("diffusion.loss=l2", "diffusion.loss: must be one of 'mse', 'l1'"),
    ("diffusion.latent_condition=crop", "diffusion.latent_condition: must be one of 'resize', 'encode'"),
    ("sample.sampler=euler", "sample.sampler: must be one of 'ddpm', 'ddim', 'dpmpp', got 'euler'"),
    ("sample.steps=0", "sample.steps: must be >= 1, got 0"),
    ("sample.eta=-0.5", "sample.eta: must be >= 0, got -0.5"),
    ("sample.spacing=uniform", "sample.spacing: must be one of 'trailing', 'leading', 'linspace'"),
    ("sample.guidance_scale=NaN", "sample.guidance_scale: must be a finite number, got nan"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("method=", "method: must be a non-empty name"),
])
def test_every_field_is_validated_in_one_line(override: str, message: str) -> None:
    cfg = C.get_preset("ci")
    msg = raises_one_line(ConfigError, message, C.apply_overrides, cfg, [override])
    key = override.partition("=")[0]
    # the same error whichever way the config is built: replace(...), from_dict, the constructor
    data = C.to_dict(C.apply_overrides(cfg, []))
    section, _, name = key.rpartition(".")
    (data[section] if section else data)[name] = json.loads(json.dumps(C._parse_value(override.partition("=")[2])))
    with pytest.raises(ConfigError) as info:
        C.from_dict(data)
    assert str(info.value) == msg


def test_sections_and_fields_of_the_wrong_kind_are_refused() -> None:
    cfg = C.get_preset("ci")
    raises_one_line(ConfigError, "train: must be a TrainConfig", dataclasses.replace, cfg, train=cfg.sample)
    raises_one_line(ConfigError, "train.batch_size: must be an integer, got '8'", dataclasses.replace, cfg,
                    train=dataclasses.replace(cfg.train, batch_size="8"))
    raises_one_line(ConfigError, "train.amp: must be true or false, got 1", dataclasses.replace, cfg,
                    train=dataclasses.replace(cfg.train, amp=1))
    raises_one_line(ConfigError, "options: must be the method's options", dataclasses.replace, cfg, options={})


def test_overrides_are_validated_once_all_are_applied() -> None:
    """An intermediate config may be invalid (batch_size 6 with grad_accum 4): only the result counts."""
    cfg = C.apply_overrides(C.get_preset("ci"), ["train.batch_size=8", "train.grad_accum=4"])
    cfg = C.apply_overrides(cfg, ["train.batch_size=6", "train.grad_accum=3"])
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (6, 3)
    raises_one_line(ConfigError, "train.grad_accum: must divide train.batch_size=6, got 4",
                    C.apply_overrides, cfg, ["train.grad_accum=4"])
    assert C._VALIDATE.get() is True  # validation is back on after an error too


def test_standalone_sections_keep_their_own_checks() -> None:
    """A section on its own is checked where it is used (fit, the UNet, a dataset), as before."""
    assert C.TrainConfig(batch_size=0).batch_size == 0 and C.DataConfig(image_size=4).image_size == 4


def test_validation_accepts_every_preset_and_keeps_every_hash() -> None:
    for task, preset in all_presets():
        cfg = C.get_preset(preset, task=task)
        assert C.validate(cfg) is cfg
        again = C.from_json(C.to_json(cfg))
        assert again == cfg and C.config_hash(again) == C.config_hash(cfg)


def test_choice_lists_match_the_implementations() -> None:
    from medgen.data.augment import RECIPES
    from medgen.data.datasets.common import REGISTRATIONS
    from medgen.data.io.windows import WINDOWS
    from medgen.diffusion.latent import CONDITION_MODES
    from medgen.diffusion.losses import LOSSES
    from medgen.diffusion.parameterization import PREDICTIONS
    from medgen.diffusion.samplers import SAMPLERS
    from medgen.diffusion.schedules import SCHEDULES, SPACINGS
    from medgen.nn.unet import MID_ATTENTION, SKIP_MODES
    from medgen.train.loop import validate_train_config

    assert set(V.SCHEDULES) == set(SCHEDULES) and set(V.SAMPLERS) == set(SAMPLERS)
    assert set(V.SPACINGS) == set(SPACINGS) and set(V.PREDICTIONS) == set(PREDICTIONS)
    assert set(V.LOSSES) == set(LOSSES) and set(V.LATENT_CONDITIONS) == set(CONDITION_MODES)
    assert set(V.SKIP_MODES) == set(SKIP_MODES) and set(V.MID_ATTENTION) == set(MID_ATTENTION)
    assert set(V.WINDOWS) == set(WINDOWS) and set(V.AUGMENTATIONS) == set(RECIPES)
    assert set(V.REGISTRATIONS) == set(REGISTRATIONS)
    train = C.get_preset("ci").train
    for name in V.LR_SCHEDULES:
        validate_train_config(dataclasses.replace(train, lr_schedule=name))
    with pytest.raises(ValueError, match="lr_schedule"):
        validate_train_config(dataclasses.replace(train, lr_schedule="linear"))
