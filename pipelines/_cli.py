"""The command line shared by the training entry points: parse, load the config, run."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Storage faults a cluster produces: reported in one line, never a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _parser(prog: str, default_config: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", default="none",
                   help="auto: newest intact checkpoint in the run directory; none: fresh run; or a checkpoint "
                        "of this run (newer ones are moved to abandoned/: the run branches there)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start a new run from any run's checkpoint (warm start): its networks load, new blocks "
                        "of a higher schedule.max_res start fresh, training starts at its resolution")
    p.add_argument("--init-optimizers", action="store_true",
                   help="with --init-from: also take its optimizer states (same networks only)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides by dotted path, e.g. train.max_steps=200 schedule.batch_size=32")
    return p


def run_training_cli(
    argv: list[str], *, default_config: str, prog: str, description: str, single_resolution: bool = False,
    models: tuple[str, ...] | None = None,
) -> int:
    """Exit code: 0 done, 1 training diverged, 2 a bad config or launch (nothing written), 3 the
    run stopped on a fault outside it, with the checkpoints written before intact: storage (disk
    full, read-only; `--resume auto` continues once it is fixed) or data (a shard missing or
    unreadable). On a data fault the process ends at once, without Python's exit handlers, so a
    loader worker stuck in a read cannot hold it (multiprocessing's handler would wait for the
    worker, which ignores SIGTERM, forever).

    `single_resolution` is for the baselines: one resolution, no growing. `models`, when given,
    are the model.name values the entry point trains. `description` is the entry point's --help text."""
    # Parsed before torch and accelerate are imported, so that --help answers at once.
    args = _parser(prog, default_config, description).parse_intermixed_args(argv)
    from gan_hr.checkpoint import CheckpointWriteError
    from gan_hr.config import ConfigError, load_config
    from gan_hr.data import DataError
    from gan_hr.training.launch import LaunchError, run_training
    from gan_hr.training.trainer import TrainingDiverged

    config = Path(args.config)
    if not config.is_file() and (ROOT / config).is_file():
        config = ROOT / config
    try:
        cfg = load_config(config, args.overrides)
        if single_resolution and cfg.schedule.start_res != cfg.schedule.max_res:
            raise ConfigError(f"schedule.start_res: {prog} trains one resolution; set it equal to schedule.max_res "
                              f"({cfg.schedule.max_res}) or use train_progressive.py")
        if models is not None and cfg.model.name not in models:
            raise ConfigError(f"model.name: {prog} trains {' or '.join(models)}, got {cfg.model.name!r}")
        if args.init_optimizers and args.init_from is None:
            raise LaunchError("--init-optimizers needs --init-from")
        run = run_training(cfg, run_dir=args.run_dir, resume=args.resume, name=config.stem,
                           init_from=args.init_from, init_optimizers=args.init_optimizers)
    except (ConfigError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    except CheckpointWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except DataError as exc:
        print(f"error: data: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"error: cannot write {exc.filename or 'the run directory'}: {exc.strerror}; the run stopped and "
              "its checkpoints are intact: fix this, then continue with --resume auto", file=sys.stderr)
        return 3
    return 0
