"""Frozen configuration dataclasses, named presets, JSON round trip and ``--set`` overrides.

Every run of medgen is described by one :class:`RunConfig`. It is immutable (frozen
dataclasses, like nanoGPT's ``GPTConfig``), serialises to JSON beside every run and
checkpoint (like EDM's ``training_options.json``) and is rebuilt from that JSON with
:func:`from_dict`, so a checkpoint names its method and every hyperparameter.

Presets are named per *task* (``quickstart``, and one per paper later): each task registers
the four budgets ``ci``, ``smoke``, ``cpu`` and ``paper`` (see DESIGN.md) with
:func:`register_presets`; :func:`get_preset` returns one.

Example
-------
>>> from medgen.config import get_preset, apply_overrides
>>> cfg = get_preset("ci", task="quickstart")
>>> cfg = apply_overrides(cfg, ["train.steps=3", "sample.sampler=ddpm"])
>>> cfg.train.steps
3
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar, Mapping, Sequence


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the offending key."""


# Field metadata of a field added after runs were cached and checkpoints shipped: config_hash leaves
# it out while it holds its default, so earlier configs keep their hash. Use as
# ``name: int = field(default=0, metadata=OMIT_AT_DEFAULT)``; tests/test_config.py pins old hashes.
OMIT_AT_DEFAULT = {"omit_at_default": True}


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetConfig:
    """The denoising / translation UNet (``medgen.nn.unet.UNet``)."""

    spatial_dims: int = 2  # 2 for [B, C, H, W] images, 3 for [B, C, D, H, W] volumes
    in_channels: int = 1  # channels of the noisy target x_t (not counting concatenated conditions)
    out_channels: int = 1  # channels the network predicts (eps, x0 or v of the target)
    channels: tuple[int, ...] = (32, 64, 128)  # feature channels per resolution level
    layers_per_block: int = 1  # residual blocks per level in the down path (up path gets one more)
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention at each level
    num_heads: int = 4  # heads of every (self / cross) attention layer
    norm_groups: int = 8  # GroupNorm groups (must divide every entry of `channels`)
    dropout: float = 0.0  # dropout inside residual blocks
    cond_image_channels: int = 0  # >0: concatenate a condition image [B, c, *S] to x_t (channel concat)
    cond_vector_dim: int = 0  # >0: embed a vector [B, d] and add it to the time embedding
    cond_tokens_dim: int = 0  # >0: cross-attention over condition tokens [B, N, d] at attention levels
    skip_residuals: bool = False  # True: add residuals [B, C_i, *S_i] to the skip connections (tuner)
    stage_embedding_dim: int = 0  # >0: per-level embeddings [B, d] added in the down and up path separately
    skip_mode: str = "concat"  # decoder skips: "concat" (ADM) or "add" (1x1-projected sum; the spine paper's 3D net, less memory)
    position_ramps: bool = False  # concatenate coordinate ramps 0..1 [B, spatial_dims, *S] to the input (the spine paper's 3D net)
    mid_attention: str = "auto"  # self-attention in the middle block: "auto" (iff the deepest level has it), "on", "off"
    time_embedding: bool = field(default=True, metadata=OMIT_AT_DEFAULT)  # False: no timestep embedding, forward(x, None, cond) (a segmentation / feature-extractor UNet)


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and training objective (``medgen.diffusion``)."""

    schedule: str = "cosine"  # named beta schedule: "linear", "cosine", "scaled_linear" (schedules.SCHEDULES)
    timesteps: int = 1000  # number of training diffusion steps T
    beta_start: float = 1e-4  # first beta of the linear schedules
    beta_end: float = 0.02  # last beta of the linear schedules
    prediction: str = "v"  # what the network outputs: "eps", "x0" or "v"
    loss: str = "mse"  # per-pixel loss on the network output: "mse" or "l1"
    x0_loss_weight: float = 0.0  # weight of the extra ||x0 - x0_hat||^2 term (enhancement paper, Eq. 9)
    cond_drop_prob: float = 0.0  # probability of replacing the condition by the null condition (CFG training)
    null_value: float = -1.0  # value of the null (black) condition image in model range [-1, 1]
    clip_x0: bool = True  # clamp predicted x0 to [-1, 1] while sampling
    learn_sigma: bool = False  # network also outputs the variance interpolation v (improved-diffusion; model.out_channels = 2 x image channels)
    vlb_weight: float = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal); used only with learn_sigma
    conditions: tuple[str, ...] = field(default=(), metadata=OMIT_AT_DEFAULT)  # per-sample scalar label keys (e.g. ("uca",)) the model is conditioned on: read from the item labels, embedded into model.cond_vector_dim, dropped with the image for CFG; translate(cond={key: [B]})
    latent_condition: str = field(default="resize", metadata=OMIT_AT_DEFAULT)  # latent mode only (an "autoencoder" parent): the image condition reaches the latent grid "resize"d (area) or "encode"d by the autoencoder (medgen.diffusion.latent)


@dataclass(frozen=True)
class SampleConfig:
    """How a trained diffusion model is sampled (``medgen.diffusion.samplers``)."""

    sampler: str = "ddim"  # "ddpm" (ancestral), "ddim" (with eta) or "dpmpp" (DPM-Solver++ 2M)
    steps: int = 20  # number of denoiser evaluations (respaced timesteps)
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM-like noise
    guidance_scale: float = 0.0  # classifier-free guidance w: (1 + w) * cond - w * uncond
    spacing: str = "trailing"  # respacing of timesteps: "trailing", "leading" or "linspace"


@dataclass(frozen=True)
class GANConfig:
    """The legacy ``gan`` section: read from old ``config.json`` files only, never set any more.

    Before each method had its own options (:class:`MethodOptions`, ``RunConfig.options``), the
    GAN translators (pix2pix, cut, syndiff) shared this catch-all. :func:`from_dict` turns an old
    file's ``gan`` section into the method's options (the fields they share), and
    :func:`hash_dict` renders options back into this shape, so old runs and shipped checkpoints
    keep their config hash. Its defaults are the legacy defaults; do not change them.
    """

    generator: str = "unet"  # "unet" (pix2pix's UNet), "resnet" (CUT's ResNet), "sa_unet" (the model UNet with t fixed)
    gen_channels: int = 64  # base feature channels of the generator (ngf); sa_unet uses model.channels
    gen_downs: int = 5  # down/up blocks of the pix2pix UNet; strided down convs of the ResNet generator
    res_blocks: int = 8  # residual blocks of the ResNet generator
    dropout: float = 0.2  # generator dropout (pix2pix UNet decoder blocks; the paper's 20 %)
    disc_channels: int = 64  # base channels of the PatchGAN discriminator (ndf)
    disc_layers: int = 3  # stride-2 down-convolution blocks of the PatchGAN discriminator
    gan_loss: str = "vanilla"  # adversarial loss: "vanilla" (BCE with logits) or "lsgan" (least squares)
    lambda_gan: float = 1.0  # weight of the adversarial term of the generator loss
    lambda_l1: float = 100.0  # pix2pix L1 weight (paired methods)
    lambda_ssim: float = 0.0  # weighted-SSIM loss weight (the paper's added term; 0 = off)
    lambda_nce: float = 1.0  # CUT PatchNCE weight
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)  # generator layers whose features enter PatchNCE
    nce_idt: bool = True  # CUT: also PatchNCE on (target -> G(target)) identity pairs
    nce_temperature: float = 0.07  # PatchNCE softmax temperature tau
    nce_patches: int = 256  # patches sampled per layer for PatchNCE
    lambda_cycle: float = 0.5  # SynDiff cycle-consistency (non-diffusive module) weight
    lr_d: float = 0.0  # discriminator learning rate (0: same as train.lr)


@dataclass(frozen=True)
class MethodOptions:
    """Base of a method's own typed options, ``RunConfig.options`` (e.g. ``Pix2PixOptions``).

    A method file defines a frozen dataclass of its settings (each field commented), derived
    from this class, validates them in ``__post_init__`` with :meth:`check` (one-line
    :class:`ConfigError` ``"<method>.<field>: ..."``) and registers it with
    :func:`register_options`. ``--set options.<field>=value`` sets one field; JSON keeps them
    under ``"options"``. ``legacy_gan``: for a method that once used the ``gan`` section, the
    values its presets wrote there for fields it never read (hash compatibility only).
    """

    METHOD: ClassVar[str] = "options"  # the method name, set by register_options (error prefix)
    legacy_gan: ClassVar[Mapping[str, Any]] = {}

    def check(self, name: str, ok: bool, requirement: str) -> None:
        """Raise ``ConfigError("<method>.<name>: <requirement>, got <value>")`` unless ``ok``."""
        if not ok:
            raise ConfigError(f"{self.METHOD}.{name}: {requirement}, got {getattr(self, name)!r}")


_OPTIONS: dict[str, type[MethodOptions]] = {}  # method name -> its options class


def register_options(method: str) -> Any:
    """Class decorator: ``cls`` is the options class of ``method`` (``RunConfig.options``)."""

    def deco(cls: type[MethodOptions]) -> type[MethodOptions]:
        if not (isinstance(cls, type) and issubclass(cls, MethodOptions) and is_dataclass(cls)):
            raise TypeError(f"register_options('{method}'): {cls!r} is not a MethodOptions dataclass")
        if _OPTIONS.get(method, cls) is not cls:
            raise ValueError(f"options of method '{method}' registered twice")
        cls.METHOD = method
        _OPTIONS[method] = cls
        return cls

    return deco


def options_class(method: str) -> type[MethodOptions] | None:
    """The options class registered for ``method`` (None: the method takes no options).

    Imports ``medgen.methods`` (which registers the shipped methods' options) on first need.
    """
    if method not in _OPTIONS and "medgen.methods" not in sys.modules:
        import importlib

        importlib.import_module("medgen.methods")
    return _OPTIONS.get(method)


def method_options(cfg: RunConfig, cls: type[MethodOptions]) -> MethodOptions:
    """``cfg.options`` checked to be a ``cls`` (``None``: ``cls()``, the defaults); else a one-line error."""
    if cfg.options is None:
        return cls()
    if not isinstance(cfg.options, cls):
        raise ConfigError(f"options: method '{cfg.method}' takes {cls.__name__}, got {type(cfg.options).__name__}")
    return cfg.options


def _from_legacy_gan(section: Mapping[str, Any], cls: type[MethodOptions], prefix: str) -> MethodOptions:
    """An old ``gan`` section (missing keys: the legacy defaults) as ``cls``: the fields they share."""
    legacy = from_dict(section, GANConfig, prefix=prefix)
    names = {f.name for f in fields(GANConfig)}
    return cls(**{f.name: getattr(legacy, f.name) for f in fields(cls) if f.name in names})


def _legacy_gan_dict(options: MethodOptions | None) -> dict[str, Any]:
    """``options`` rendered as the old ``gan`` section (what config hashes were computed from)."""
    out = dataclasses.asdict(GANConfig())
    if options is not None:
        out.update(options.legacy_gan)
        out.update({f.name: getattr(options, f.name) for f in fields(options) if f.name in out})
    return hash_dict(out)


@dataclass(frozen=True)
class TrainConfig:
    """The generic training loop (``medgen.train.fit``)."""

    steps: int = 1000  # optimizer steps (each over grad_accum micro-batches)
    batch_size: int = 16  # global batch size per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size must be divisible by it)
    lr: float = 3e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 0  # linear LR warm-up from 0 over this many steps
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at `steps`)
    ema_decay: float = 0.999  # EMA decay of the weights used for sampling (0 disables EMA)
    grad_clip: float = 1.0  # max global gradient norm (0 disables clipping)
    amp: bool = False  # mixed precision; only used on CUDA (bf16 autocast is ~50x slower on this CPU)
    log_every: int = 10  # steps between progress-bar / log updates
    sample_every: int = 0  # steps between saved sample grids (0: never)
    ckpt_every: int = 0  # steps between checkpoints (0: only at the end)
    num_threads: int = 2  # torch CPU threads (2 is fastest on the 2-core reference machine)


@dataclass(frozen=True)
class DataConfig:
    """Which data set, its size and its patient-level split."""

    dataset: str = "toy_shapes"  # registry.DATASETS kind: toy_shapes, paired, unpaired, multi_depth, volume_slices, volume
    image_size: int = 32  # width in pixels of the model input (its height: image_height)
    n_train: int = 512  # training samples (phantoms are generated on the fly from seeds)
    n_test: int = 64  # held-out test samples (disjoint seeds / patients)
    manifest: str = ""  # CSV manifest of real data (patient_id, source, target, ...); "" for phantoms
    split_seed: int = 0  # seed of the hashed patient-level split
    phantom: str = ""  # registry.PHANTOMS anatomy behind a phantom-backed dataset ("" for toy/manifest)
    source: str = "source"  # modality key(s) of the input; several joined by "," become channels
    target: str = "target"  # modality key of the output ("" for unpaired / unconditional data)
    depth: int = 0  # slices of a 3D volume (0: the phantom's paper depth scaled to image_size; required (> 0) for 3D spine_sagittal)
    test_fraction: float = 0.2  # share of patients held out when a manifest is split by patient
    window: str = ""  # HU window of CT from real data: soft_tissue (W400/L40), lung (W1500/L-600), bone (W1800/L400); "" = modality range
    augment: str = ""  # augmentation recipe names joined by "+" ("flip", "mri_jitter", "elastic3d"); "" none
    source_resize: bool = False  # resize every source image to the target's grid (bilinear; e.g. ultrasound on a subsampled scan-line grid)
    registration: str = ""  # rigid landmark registration of the target onto the source frame: "" none, "one" / "two" landmarks per vertebra (medgen.registration)
    image_height: int = field(default=0, metadata=OMIT_AT_DEFAULT)  # rows of the model input (width: image_size); 0: the data's own aspect ratio (toy_shapes square, a phantom's paper aspect, a manifest's first row)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. Saved as ``config.json`` beside every checkpoint."""

    name: str = "quickstart"  # human-readable run name (also the task whose presets built it)
    preset: str = "ci"  # the preset this config started from: ci, smoke, cpu or paper
    method: str = "cddpm"  # registry.METHODS name of the method to train
    seed: int = 0  # global seed: data order, init, noise
    data: DataConfig = field(default_factory=DataConfig)  # data set and split
    model: UNetConfig = field(default_factory=UNetConfig)  # network
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # forward process / loss
    sample: SampleConfig = field(default_factory=SampleConfig)  # sampling at evaluation time
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    # The method's own typed options (its registered MethodOptions class, e.g. Pix2PixOptions;
    # None: its defaults, or a method without options); --set options.<field>=value.
    options: MethodOptions | None = None
    # Staged methods: name -> the full config of a parent run this method is trained on top of
    # (frozen; e.g. {"autoencoder": <its RunConfig>}). The names are the method's parent_names;
    # zoo.resolve_parents finds each (shipped, cached or trained) and train_or_load /
    # load_translator attach them. Part of config_hash (omitted only while empty).
    parents: dict[str, RunConfig] = field(default_factory=dict, metadata=OMIT_AT_DEFAULT)

    def __hash__(self) -> int:  # `parents` is a dict; a config hashes by its content
        return hash(config_hash(self))

    def __post_init__(self) -> None:  # every field checked at construction (validate); --set checks once at the end
        if _VALIDATE.get():
            validate(self)


# --------------------------------------------------------------------------------------
# Validation (RunConfig.__post_init__): the checks live in medgen.config_checks
# --------------------------------------------------------------------------------------
# False while apply_overrides sets several keys one by one (an intermediate config may be invalid:
# batch_size before grad_accum); it validates the result once. A ContextVar: threads do not share it.
_VALIDATE: contextvars.ContextVar[bool] = contextvars.ContextVar("medgen_config_validate", default=True)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field of ``cfg``; one-line :class:`ConfigError` naming the first bad field
    (:func:`medgen.config_checks.validate`). Returns ``cfg``."""
    from medgen.config_checks import validate as check  # it imports this module: imported on use

    return check(cfg)


# --------------------------------------------------------------------------------------
# JSON round trip
# --------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-python dict of a config dataclass (tuples become lists in JSON)."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    """Canonical, sorted JSON text of a config."""
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def hash_dict(cfg: Any) -> Any:
    """:func:`to_dict` of ``cfg`` without the fields marked :data:`OMIT_AT_DEFAULT` that hold their default.

    What :func:`config_hash` hashes: a field added after runs were cached and checkpoints shipped
    is marked ``field(default=..., metadata=OMIT_AT_DEFAULT)``, so every earlier config keeps its hash.
    """
    if is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("omit_at_default") and value == _field_default(f):
                continue
            if isinstance(cfg, RunConfig) and f.name == "options":
                out.update(_options_hash_dict(cfg))
                continue
            out[f.name] = hash_dict(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [hash_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: hash_dict(v) for k, v in cfg.items()}
    return cfg


def _options_hash_dict(cfg: RunConfig) -> dict[str, Any]:
    """The hash of ``cfg.options``: the legacy ``gan`` section they fill, plus ``"options"`` with any
    field that section lacks (``None``: the method's defaults, so both hash alike)."""
    options = cfg.options
    if options is None:
        cls = options_class(cfg.method)
        options = cls() if cls is not None else None
    out: dict[str, Any] = {"gan": _legacy_gan_dict(options)}
    legacy = {f.name for f in fields(GANConfig)}
    extra = {} if options is None else {f.name: hash_dict(getattr(options, f.name))
                                        for f in fields(options) if f.name not in legacy}
    if extra:
        out["options"] = extra
    return out


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config (used to cache trained models by config).

    Hashes :func:`hash_dict`: fields marked :data:`OMIT_AT_DEFAULT` count only when changed.
    """
    text = json.dumps(hash_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a JSON value to the annotated field type ``tp`` (tuples, nested dataclasses)."""
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an object for {tp.__name__}, got {value!r}")
        return from_dict(value, tp, prefix=key + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an object, got {value!r}")
        value_tp = typing.get_args(tp)[1]
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _unknown_key(key: str, choices: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(choices)}"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def from_dict(data: Mapping[str, Any], cls: type = RunConfig, prefix: str = "") -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are errors.

    A RunConfig's ``options`` are built as the options class of its ``method`` (missing: its
    defaults); an old file's ``gan`` section becomes those options (:class:`GANConfig`).
    """
    if cls is RunConfig:
        data = _read_options(data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, names, prefix)
        kwargs[key] = value if cls is RunConfig and key == "options" else _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _read_options(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with ``"options"`` built for its method and a legacy ``"gan"`` section migrated into it."""
    data = dict(data)
    method = data.get("method", RunConfig.method)
    cls = options_class(method) if isinstance(method, str) else None
    legacy, raw = data.pop("gan", None), data.pop("options", None)
    if legacy is not None and raw is not None:
        raise ConfigError(f"{prefix}gan: an old 'gan' section and 'options' both given (keep 'options')")
    if legacy is not None and not isinstance(legacy, Mapping):
        raise ConfigError(f"{prefix}gan: expected an object, got {legacy!r}")
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}options: expected an object, got {raw!r}")
    if cls is None:
        if raw:
            raise ConfigError(f"{prefix}options: method '{method}' takes no options, got {', '.join(raw)}")
        options = None  # a legacy gan section of a method that never read it is dropped
    elif raw is not None:
        options = from_dict(raw, cls, prefix=f"{prefix}options.")
    elif legacy is not None:
        options = _from_legacy_gan(legacy, cls, f"{prefix}gan.")
    else:
        options = cls()
    data["options"] = options
    return data


def from_json(text: str) -> RunConfig:
    """Parse :func:`to_json` output."""
    return from_dict(json.loads(text))


# --------------------------------------------------------------------------------------
# --set key=value overrides
# --------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    """JSON if it parses (numbers, true/false, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if text.startswith("(") and text.endswith(")"):
            return json.loads("[" + text[1:-1].rstrip(",") + "]")
        return text


def set_value(cfg: Any, dotted: str, value: Any, prefix: str = "") -> Any:
    """Return a copy of ``cfg`` with ``dotted`` (e.g. ``train.lr``) set to ``value``."""
    head, _, rest = dotted.partition(".")
    names = [f.name for f in fields(cfg)]
    if isinstance(cfg, RunConfig):
        special = _set_run_value(cfg, head, rest, value, prefix)
        if special is not None:
            return special
    if head not in names:
        raise _unknown_key(head, names, prefix)
    hints = typing.get_type_hints(type(cfg))
    if rest:
        sub = getattr(cfg, head)
        if not is_dataclass(sub):
            raise ConfigError(f"config key '{head}' has no sub-key '{rest}'")
        new_sub = set_value(sub, rest, value, prefix=f"{prefix}{head}.")
        return replace(cfg, **{head: new_sub})
    if is_dataclass(hints[head]):
        raise ConfigError(f"config key '{head}' is a section; set one of its fields, e.g. '{head}.<field>=...'")
    return replace(cfg, **{head: _coerce(value, hints[head], prefix + dotted)})


def _set_run_value(cfg: RunConfig, head: str, rest: str, value: Any, prefix: str) -> RunConfig | None:
    """``options.<field>`` (on the method's options; None: its defaults) and ``method`` (whose options
    are reset to the new method's defaults when their class differs); None for every other key."""
    if head == "gan":
        raise ConfigError(f"config key '{prefix}gan' is gone: a method's settings are its typed options, "
                          f"'{prefix}options.<field>' (e.g. options.lambda_l1)")
    if head == "options":
        cls = options_class(cfg.method)
        if cls is None:
            raise ConfigError(f"config key '{prefix}options': method '{cfg.method}' takes no options")
        if not rest:
            raise ConfigError(f"config key '{prefix}options' is a section; set one of its fields, "
                              f"e.g. '{prefix}options.<field>=...'")
        return replace(cfg, options=set_value(method_options(cfg, cls), rest, value, prefix=f"{prefix}options."))
    if head == "method" and not rest:
        method = _coerce(value, str, prefix + head)
        cls = options_class(method)
        keep = cls is not None and isinstance(cfg.options, cls)
        return replace(cfg, method=method, options=cfg.options if keep else (cls() if cls is not None else None))
    return None


def apply_overrides(cfg: RunConfig, overrides: Sequence[str] | Mapping[str, Any] | None) -> RunConfig:
    """Apply ``["section.key=value", ...]`` (CLI ``--set``) or a ``{"section.key": value}`` dict."""
    if not overrides:
        return cfg
    items = overrides.items() if isinstance(overrides, Mapping) else None
    if items is None:
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override '{text}' is not of the form key=value")
            key, _, raw = text.partition("=")
            parsed.append((key.strip(), _parse_value(raw.strip())))
        items = parsed
    token = _VALIDATE.set(False)  # keys are set one by one: only the result must be valid
    try:
        for key, value in items:
            cfg = set_value(cfg, key, value)
    finally:
        _VALIDATE.reset(token)
    return validate(cfg)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
PRESET_NAMES = ("ci", "smoke", "cpu", "paper")
_PRESETS: dict[str, dict[str, RunConfig]] = {}


def register_presets(task: str, presets: Mapping[str, RunConfig]) -> None:
    """Register the four named presets of a task (``ci``, ``smoke``, ``cpu``, ``paper``)."""
    missing = [p for p in PRESET_NAMES if p not in presets]
    if missing:
        raise ConfigError(f"task '{task}' lacks presets {missing}")
    _PRESETS[task] = {name: replace(cfg, preset=name, name=task) for name, cfg in presets.items()}


# The paper preset modules; each calls :func:`register_presets` for its tasks when imported.
# They are imported by name (importlib), never by a module-level import: they import this module.
PRESET_MODULES = ("medgen.presets.quickstart", "medgen.presets.mri_to_ct", "medgen.presets.lung_us",
                  "medgen.presets.latent")


def _load_preset_modules() -> None:
    """Import the paper preset modules (:data:`PRESET_MODULES`) once; they register their tasks."""
    import importlib

    for name in PRESET_MODULES:
        importlib.import_module(name)


def get_preset(preset: str, task: str = "quickstart") -> RunConfig:
    """The named preset of a task; unknown names give a one-line error with a suggestion."""
    if task not in _PRESETS:
        _load_preset_modules()
    if task not in _PRESETS:
        raise _unknown_key(task, sorted(_PRESETS), "task ")
    table = _PRESETS[task]
    if preset not in table:
        close = difflib.get_close_matches(preset, list(table), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{preset}' (choose from {', '.join(table)}){hint}")
    return table[preset]


def tasks() -> list[str]:
    """Names of every task that has registered presets."""
    _load_preset_modules()
    return sorted(_PRESETS)
