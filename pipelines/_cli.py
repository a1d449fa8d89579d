"""The command line shared by the training entry points: parse, load the config, run."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parser(prog: str, default_config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a GAN; key=value arguments override config keys.")
    p.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", default="none",
                   help="auto: newest checkpoint in the run directory; none: fresh run; or a checkpoint path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=200 model.name=stylegan")
    return p


def run_training_cli(argv: list[str], *, default_config: str, prog: str, single_resolution: bool = False) -> int:
    """Exit code: 0 done, 1 training diverged, 2 a bad config or launch (nothing written), 3 a data
    fault while training (a shard missing or unreadable; the checkpoints written so far stay): the
    process ends at once, without Python's exit handlers, so a loader worker stuck in a read cannot
    hold it (multiprocessing's handler would wait for the worker, which ignores SIGTERM, forever).

    `single_resolution` is for the baselines: one resolution, no growing."""
    from gan_hr.config import ConfigError, load_config
    from gan_hr.data import DataError
    from gan_hr.training.launch import LaunchError, run_training
    from gan_hr.training.trainer import TrainingDiverged

    args = _parser(prog, default_config).parse_args(argv)
    config = Path(args.config)
    if not config.is_file() and (ROOT / config).is_file():
        config = ROOT / config
    try:
        cfg = load_config(config, args.overrides)
        if single_resolution and cfg.schedule.start_res != cfg.schedule.max_res:
            raise ConfigError(f"schedule.start_res: {prog} trains one resolution; set it equal to schedule.max_res "
                              f"({cfg.schedule.max_res}) or use train_progressive.py")
        run = run_training(cfg, run_dir=args.run_dir, resume=args.resume, name=config.stem)
    except (ConfigError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:
        print(f"error: data: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    if os.environ.get("RANK", "0") == "0":
        _write_plots(run.root)
    return 0


def _write_plots(run_dir: Path) -> None:
    """Plots of the run's metrics; a plotting problem is reported, never a failed run."""
    from gan_hr.plots import plot_run

    try:
        written = plot_run(run_dir)
    except (OSError, ValueError) as exc:
        warnings.warn(f"no plots written: {exc}", stacklevel=2)
        return
    if written:
        print(f"plots in {written[0].parent}")
