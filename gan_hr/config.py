"""Typed configuration: YAML into dataclasses, dotted overrides, validation before anything runs.

Every key a user can set lives in one of the section dataclasses below. `load_config` merges a
YAML file with `key=value` overrides, coerces each value to its field's type and validates the
result; any problem raises `ConfigError` with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gan_hr.manifest import MANIFEST, ManifestError, image_counts, parse_manifest, remote_template
from gan_hr.resolutions import is_power_of_two, resolutions_between


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key."""


@dataclass
class DataConfig:
    # A data_prep output directory (holds manifest.json); None trains on the built-in set.
    path: str | None = None
    # Built-in synthetic set: how many images, and where it is prepared on first use.
    synthetic_images: int = 2048
    synthetic_dir: str = "data/synthetic"
    # Its classes, for model.conditional (data_prep --labels): "shapes", the kind of the first
    # shape, or "backgrounds", the gradient's colours, which a CPU run learns in minutes.
    synthetic_labels: str = "shapes"
    # Random horizontal flips, as in the ProGAN/StyleGAN CelebA-HQ runs.
    mirror: bool = True
    # Loader worker processes per training process (0 reads in the training process; else a
    # divisor of 16), or auto: per resolution, from the CPUs the process may use
    # (gan_hr.data.loader_workers). A speed setting only: the data order never depends on it.
    num_workers: int | str = "auto"


@dataclass
class ModelConfig:
    name: str = "progan"
    latent_dim: int = 512
    # Channels at resolution r: min(channel_base // r, channel_max) (16384/512 = the papers').
    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group_size: int = 4
    # StyleGAN generator.
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    style_mixing_prob: float = 0.9
    w_avg_beta: float = 0.995
    truncation_psi: float = 1.0
    truncation_cutoff: int = 8
    blur: bool = True
    noise: bool = True
    # StyleGAN2's weight demodulation in every styled conv in place of AdaIN's instance norm
    # (gan_hr/nn/style.py); the 4x4 constant keeps AdaIN. Off = StyleGAN v1, as the paper.
    demodulate: bool = False
    # DCGAN/LSGAN: feature maps of the widest layer at 64² is 8 * base_width.
    base_width: int = 64
    # SyncBatchNorm for batch-norm models: auto = on when more than one process.
    sync_batchnorm: str = "auto"
    # Spectral normalization of every discriminator layer (Miyato et al. 2018), any model and
    # loss; the DCGAN discriminator then has no batch norm. See gan_hr/nn/spectral.py.
    d_spectral_norm: bool = False
    # VAE (model.name=vae): weight of the KL term in recon + beta * KL (Kingma & Welling 2014 is
    # 1; Higgins et al.'s beta-VAE varies it). See gan_hr/losses.py, vae_loss.
    vae_beta: float = 1.0
    # Condition G and D on the data's labels, classes or attributes (gan_hr/labels.py; README,
    # Conditional GANs). The label_* keys are the data's, filled from its manifest when a run
    # starts (not set by hand), so that a checkpoint knows them without the data.
    conditional: bool = False
    label_kind: str | None = None
    label_names: list[str] = field(default_factory=list)
    # Fraction of the images in each class, or with each attribute.
    label_frequencies: list[float] = field(default_factory=list)


@dataclass
class LossConfig:
    # wgan_gp | logistic (non-saturating; with R1 when r1_gamma > 0) | lsgan
    name: str = "wgan_gp"
    gp_lambda: float = 10.0
    gp_target: float = 1.0
    drift: float = 0.001
    r1_gamma: float = 10.0
    # Lazy regularisation: apply R1 every k D steps, scaled by k (StyleGAN2). 1 = every step.
    r1_every: int = 1


@dataclass
class ScheduleConfig:
    start_res: int = 4
    max_res: int = 1024
    # Images shown while fading a new resolution in, then while training it stable.
    fade_kimg: float = 600.0
    stable_kimg: float = 600.0
    # Global minibatch (all processes together) and learning rate, with per-resolution overrides.
    batch_size: int = 16
    batch_by_res: dict[int, int] = field(default_factory=dict)
    lr: float = 0.001
    lr_by_res: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    seed: int = 0
    total_kimg: float = 12000.0
    # Stop after this many generator steps (tests, benchmarks, short jobs); None = no limit.
    max_steps: int | None = None
    # auto: bf16 where the hardware computes in it (CUDA with bf16, CPUs with AVX512-BF16/AMX), else no.
    mixed_precision: str = "auto"
    # torch.compile of each resolution block (gan_hr/training/compile.py); the backend is torch's name.
    compile: bool = False
    compile_backend: str = "inductor"
    adam_betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    adam_eps: float = 1e-8
    # The official ProGAN resets Adam state when a new resolution starts.
    reset_optimizer_on_grow: bool = True
    ema_halflife_kimg: float = 10.0
    # EMA ramp-up (StyleGAN2): half-life at most this fraction of images seen; None = off.
    ema_rampup: float | None = None
    checkpoint_every_kimg: float = 100.0
    keep_checkpoints: int = 3
    sample_every_kimg: float = 50.0
    sample_grid: int = 16
    log_every_steps: int = 10
    # Non-finite steps in a row before the run stops with a checkpoint of the last good state.
    nan_tolerance: int = 10
    # Metrics during training (swd, fid, kid) on the EMA generator; errors never stop training.
    metrics: list[str] = field(default_factory=list)
    metrics_every_kimg: float = 500.0
    metrics_num_images: int = 2048
    # The Inception weights file FID/KID need (else $GAN_HR_INCEPTION_WEIGHTS); never downloaded.
    inception_weights: str | None = None
    # When the run has trained as long as asked (max_steps, total_kimg): the SWD of the EMA
    # generator against the data's real-vs-real floor, in the summary and metrics.jsonl.
    final_swd: bool = True


@dataclass
class TrackingConfig:
    backend: str = "none"
    project: str = "gan_hr"
    entity: str | None = None
    run_name: str | None = None
    # Seconds W&B may take to start online before the run falls back to offline logging.
    init_timeout_s: float = 20.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_root(self) -> str:
        """The data a run reads: data.path, or where the built-in synthetic set is prepared."""
        if self.data.path is not None:
            return self.data.path
        name = f"synthetic-{self.data.synthetic_images}-{self.schedule.max_res}"
        if self.model.conditional:
            name += f"-{self.data.synthetic_labels}"  # the same images, with those classes
        # os.path.join, not Path: Path drops a leading ./, which turns './pipe:x' into a command.
        return os.path.join(self.data.synthetic_dir, name)


MODEL_NAMES = ("progan", "stylegan", "dcgan", "vae")
SYNTHETIC_LABELS = ("shapes", "backgrounds")  # data_prep --labels kinds of the built-in set
# Models that train at one resolution (no growing), on DCGAN's networks.
SINGLE_RES_MODELS = ("dcgan", "vae")
LOSS_NAMES = ("wgan_gp", "logistic", "lsgan")
PRECISIONS = ("auto", "no", "bf16", "fp16")
BACKENDS = ("wandb", "none")
METRICS = ("swd", "fid", "kid")
# The data stream's slots per training process (gan_hr.data): the most loader workers a process
# can use, and the fewest images a data set needs. Workers are 0 or a divisor, so that the data
# order never depends on them.
SLOTS_PER_RANK = 16
WORKER_COUNTS = (0, *(n for n in range(1, SLOTS_PER_RANK + 1) if SLOTS_PER_RANK % n == 0))


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `key=value` overrides and validate; raises ConfigError."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML: {exc}".splitlines()[0]) from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config: {path} must hold a mapping of sections")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(raw)
    validate(cfg)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML, so 1e-3, true and [x, y] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and coercing types."""
    return _build(Config, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name], prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(raw[name], hint, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type that takes the value (int | str: 2 or "auto")
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {
            _coerce_key(k, args[0], f"{key}.{k}"): _coerce(v, args[1], f"{key}.{k}")
            for k, v in value.items()
        }
    raise ConfigError(f"{key}: unsupported type {hint}")


def _coerce_key(value: Any, hint: Any, key: str) -> Any:
    # Mapping keys arrive as strings from dotted overrides and from JSON (checkpoint metadata).
    if hint is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return _coerce(value, hint, key)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: Any, choices: tuple, key: str) -> None:
    _check(value in choices, key, f"must be one of {', '.join(choices)}, got {value!r}")


def _compile_backends() -> tuple[str, ...]:
    import torch._dynamo  # only when compile is asked for: importing it takes a second

    return tuple(torch._dynamo.list_backends(exclude_tags=()))


def validate(cfg: Config) -> None:
    """Check every value; raises ConfigError naming the first bad key."""
    d, m, lo, s, t, tr = cfg.data, cfg.model, cfg.loss, cfg.schedule, cfg.train, cfg.tracking

    _check(d.synthetic_images > 0, "data.synthetic_images", "must be positive")
    _check(d.synthetic_labels in SYNTHETIC_LABELS, "data.synthetic_labels",
           f"must be one of {', '.join(SYNTHETIC_LABELS)}")
    _check(d.num_workers == "auto" or isinstance(d.num_workers, int) and d.num_workers in WORKER_COUNTS,
           "data.num_workers", f"must be auto or one of {', '.join(map(str, WORKER_COUNTS))} (a divisor of the "
           f"data stream's 16 slots per process), got {d.num_workers!r}")

    _one_of(m.name, MODEL_NAMES, "model.name")
    for key in ("latent_dim", "channel_base", "channel_max", "w_dim", "base_width"):
        _check(getattr(m, key) > 0, f"model.{key}", "must be positive")
    _check(m.mbstd_group_size >= 0, "model.mbstd_group_size", "must be 0 (off) or more")
    _check(m.mapping_layers >= 1, "model.mapping_layers", "must be at least 1")
    _check(m.mapping_lr_mul > 0, "model.mapping_lr_mul", "must be positive")
    _check(0 <= m.style_mixing_prob <= 1, "model.style_mixing_prob", "must be in [0, 1]")
    _check(0 <= m.w_avg_beta < 1, "model.w_avg_beta", "must be in [0, 1)")
    _check(m.truncation_cutoff >= 0, "model.truncation_cutoff", "must be 0 or more")
    _one_of(m.sync_batchnorm, ("auto", "on", "off"), "model.sync_batchnorm")
    _check(m.label_kind in (None, "class", "attributes"), "model.label_kind",
           f"must be class, attributes or null, got {m.label_kind!r}")
    _check(m.conditional or not m.label_names, "model.label_names",
           "is only for model.conditional (filled from the data's manifest when a run starts)")

    _one_of(lo.name, LOSS_NAMES, "loss.name")
    for key in ("gp_lambda", "drift", "r1_gamma"):
        _check(getattr(lo, key) >= 0, f"loss.{key}", "must be 0 or more")
    _check(lo.gp_target > 0, "loss.gp_target", "must be positive")
    _check(lo.r1_every >= 1, "loss.r1_every", "must be at least 1")

    for key in ("start_res", "max_res"):
        res = getattr(s, key)
        _check(is_power_of_two(res) and res >= 4, f"schedule.{key}", f"must be a power of two >= 4, got {res}")
    _check(s.start_res <= s.max_res, "schedule.start_res", f"must not exceed schedule.max_res ({s.max_res})")
    _check(m.vae_beta >= 0, "model.vae_beta", f"must be 0 or more (the KL weight), got {m.vae_beta!r}")
    if m.name == "vae":
        _check(not m.d_spectral_norm, "model.d_spectral_norm", "must be false for vae (it has no discriminator)")
        _check(not m.conditional, "model.conditional", "must be false for vae (the VAE baseline is unconditional)")
    if m.name in SINGLE_RES_MODELS:
        _check(s.start_res == s.max_res, "schedule.start_res", f"must equal schedule.max_res for {m.name} (no growing)")
        _check(s.max_res >= 32, "schedule.max_res", f"must be 32 or more for {m.name}")
    _check(s.fade_kimg >= 0, "schedule.fade_kimg", "must be 0 or more")
    _check(s.stable_kimg >= 0, "schedule.stable_kimg", "must be 0 or more")
    _check(s.batch_size > 0, "schedule.batch_size", "must be positive")
    _check(s.lr > 0, "schedule.lr", "must be positive")
    for res, batch in s.batch_by_res.items():
        _check(is_power_of_two(res), f"schedule.batch_by_res.{res}", "resolution must be a power of two")
        _check(batch > 0, f"schedule.batch_by_res.{res}", "must be positive")
    for res, lr in s.lr_by_res.items():
        _check(is_power_of_two(res), f"schedule.lr_by_res.{res}", "resolution must be a power of two")
        _check(lr > 0, f"schedule.lr_by_res.{res}", "must be positive")

    _check(t.total_kimg > 0, "train.total_kimg", "must be positive")
    _check(t.max_steps is None or t.max_steps > 0, "train.max_steps", "must be positive")
    _one_of(t.mixed_precision, PRECISIONS, "train.mixed_precision")
    if t.compile:
        _one_of(t.compile_backend, _compile_backends(), "train.compile_backend")
    _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
           "train.adam_betas", "must be two numbers in [0, 1)")
    _check(t.adam_eps > 0, "train.adam_eps", "must be positive")
    _check(t.ema_halflife_kimg >= 0, "train.ema_halflife_kimg", "must be 0 (off) or more")
    _check(t.ema_rampup is None or t.ema_rampup > 0, "train.ema_rampup", "must be positive or null")
    for key in ("checkpoint_every_kimg", "sample_every_kimg", "metrics_every_kimg"):
        _check(getattr(t, key) > 0, f"train.{key}", "must be positive")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")
    _check(t.sample_grid >= 1, "train.sample_grid", "must be at least 1")
    _check(t.log_every_steps >= 1, "train.log_every_steps", "must be at least 1")
    _check(t.nan_tolerance >= 1, "train.nan_tolerance", "must be at least 1")
    _check(t.metrics_num_images >= 2, "train.metrics_num_images", "must be at least 2")
    for i, name in enumerate(t.metrics):
        _one_of(name, METRICS, f"train.metrics[{i}]")

    _one_of(tr.backend, BACKENDS, "tracking.backend")
    _check(0 < tr.init_timeout_s <= 300, "tracking.init_timeout_s", "must be in (0, 300] seconds")

    if d.path is not None:
        _validate_data_path(d.path, s.start_res, s.max_res, conditional=m.conditional)


def _validate_data_path(path: str, start_res: int, max_res: int, *, conditional: bool = False) -> None:
    """The data set has images at every resolution the schedule trains, by its manifest: a data set
    without them fails here, before the run directory exists, rather than when its phase starts.
    No shard is opened (each phase checks its own when it starts, gan_hr.data)."""
    # Object-storage URLs are read lazily; only local directories can be checked up front.
    if "://" in path or path.startswith("pipe:"):
        try:
            remote_template(path)  # where the manifest's paths go in it
        except ValueError as exc:
            raise ConfigError(f"data.path: {exc}") from None
        return
    manifest = Path(path) / MANIFEST
    _check(Path(path).is_dir(), "data.path", f"no such directory: {path}")
    _check(manifest.is_file(), "data.path", f"no {MANIFEST} in {path} (run python -m data_prep)")
    try:
        parsed = parse_manifest(manifest.read_bytes())
        counts = image_counts(parsed)
    except OSError as exc:
        raise ConfigError(f"data.path: {manifest} is unreadable ({exc.strerror})") from exc
    except ManifestError as exc:
        raise ConfigError(f"data.path: {manifest} {exc}".splitlines()[0]) from exc
    _check(not conditional or "labels" in parsed, "model.conditional",
           f"the data in {path} has no labels: prepare it with python -m data_prep --labels folders|shapes|backgrounds|FILE")
    _check(any(counts.values()), "data.path",
           f"{manifest} lists no shards: the data set holds no images (see its \"skipped\")")
    _check(max_res <= max(counts), "schedule.max_res",
           f"{max_res} is above the data's largest resolution ({max(counts)}) in {path}")
    for res in resolutions_between(start_res, max_res):
        _check(counts.get(res, 0) > 0, "data.path",
               f"{manifest} lists no shards at {res}x{res}, which the schedule trains "
               f"(schedule.start_res {start_res} to schedule.max_res {max_res})")
        _check(counts[res] >= SLOTS_PER_RANK, "data.path",
               f"{manifest} has {counts[res]} images at {res}x{res}; training needs at least {SLOTS_PER_RANK} "
               "per process (the data stream's slots)")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run really used)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
