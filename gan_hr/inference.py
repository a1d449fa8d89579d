"""Load a trained generator for sampling and evaluation, without any training machinery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_hr.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from gan_hr.config import Config, from_dict
from gan_hr.models import build_generator


@dataclass
class TrainedGenerator:
    generator: nn.Module
    resolution: int
    alpha: float
    config: Config
    meta: dict[str, Any]
    path: Path


def load_generator(path: str | Path, *, use_ema: bool = True) -> TrainedGenerator:
    """The (EMA) generator of a checkpoint, a checkpoints/ folder or a run directory, in eval mode,
    with the resolution and fade-in it had reached."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path, with_training_state=False)
    # A verified checkpoint whose config or tensors do not fit this code (another version, a
    # foreign file with a matching meta.json) is a CheckpointError saying so, not a traceback.
    try:
        cfg = from_dict(ckpt.meta["config"])
        generator = build_generator(cfg.model, cfg.schedule.max_res)
        generator.load_state_dict(ckpt.models["G_ema" if use_ema else "G"])
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt_path}: not a gan_hr checkpoint ({str(exc).splitlines()[0]})") from exc
    resolution, alpha = int(ckpt.meta["resolution"]), float(ckpt.meta["alpha"])
    generator.eval().requires_grad_(False)
    return TrainedGenerator(
        generator=generator,
        resolution=resolution,
        alpha=alpha,
        config=cfg,
        meta=ckpt.meta,
        path=ckpt_path,
    )


@torch.no_grad()
def generate(trained: TrainedGenerator, z: torch.Tensor, labels: torch.Tensor | None = None,
             **style_kwargs: Any) -> torch.Tensor:
    """Images in [-1, 1] at the checkpoint's resolution; style kwargs (truncation, noise) go
    only to generators that take them. A conditional generator needs `labels`, vectors [N, A]
    (gan_hr.labels)."""
    G = trained.generator
    kwargs = dict(style_kwargs) if getattr(G, "supports_style", False) else {}
    if labels is not None:
        kwargs["labels"] = labels.to(z.device)
    return G(z, trained.resolution, trained.alpha, **kwargs)
