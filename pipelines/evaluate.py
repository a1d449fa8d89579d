"""Image-quality metrics of a checkpoint's EMA generator against a data set; prints one JSON line.

    python pipelines/evaluate.py --checkpoint P --metric swd [--metric fid --metric kid]
        [--data DIR] [--num N] [--batch-size B] [--truncation PSI] [--inception-weights W]
        [--append-metrics]

--checkpoint takes a checkpoint directory, a run's checkpoints/ folder or a run directory (its
newest checkpoint); of a VAE, its decoder is scored on samples from the prior. --data takes a data_prep directory, a URL or a pipe: command. It defaults
to the checkpoint config's data.path; for a run on the built-in set (data.path null) it is the
synthetic set the trainer prepared, at
<data.synthetic_dir>/synthetic-<data.synthetic_images>-<schedule.max_res>, relative to the
current directory as in training. That default must be a local data_prep directory: a saved
pipe: command or URL is never run (checkpoints are shared), and --data is asked for instead.
--num defaults to the config's train.metrics_num_images.

SWD is printed with its floor beside it: the SWD of the real set's first half against its second
half at the same settings (swd_floor_<res>, swd_floor_mean in the JSON), what no generator can be
expected to beat with this many images. It is computed once per data set, resolution and --num
and cached under --cache-dir.
Truncation is off unless --truncation is given (StyleGAN only), as FID is usually reported.

Real images are the first N of the data set's stream at the checkpoint's resolution; fakes come
from seeds S .. S+N-1 (what generate.py --seed S writes). FID/KID need the standard Inception
weights file (--inception-weights or $GAN_HR_INCEPTION_WEIGHTS); nothing is downloaded. Real
image statistics for FID/KID and the SWD floor are cached under --cache-dir (default
<data>/.fid_cache).

A conditional checkpoint's fake i takes a label drawn from the data's label frequencies with
seed S + i. --per-class (conditional checkpoints) adds the SWD of each class, or of each value of
each attribute (Smiling=1, Smiling=0, ...): the first N reals of that group (fewer when it has
fewer) against as many fakes given those reals' own labels: swd_mean_<group> and
num_images_<group> in the JSON.

--append-metrics also appends the record, with "metric_source": "evaluate", to the run's
metrics.jsonl (the run directory holding checkpoints/<checkpoint>). Exit codes: 0 done, 2 bad
arguments, checkpoint or data, or no Inception weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# torch and gan_hr are imported after the arguments are parsed, so that --help and usage errors
# answer at once. The names match gan_hr.metrics.METRICS (tests/test_evaluate.py checks).
METRIC_NAMES = ("fid", "kid", "swd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint directory, a checkpoints/ folder or a run directory")
    p.add_argument("--data", default=None, help="data_prep output directory (default: the one the run trained on)")
    p.add_argument("--metric", action="append", choices=METRIC_NAMES, default=None,
                   help="metric to compute; repeat for several (default swd)")
    p.add_argument("--num", type=int, default=None, help="real and fake images (default: train.metrics_num_images)")
    p.add_argument("--batch-size", type=int, default=32, help="images per generator forward (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the real stream and first latent seed")
    p.add_argument("--truncation", type=float, default=1.0, help="StyleGAN truncation psi (default 1: off)")
    p.add_argument("--inception-weights", default=None,
                   help="FID Inception-v3 weights file (or set GAN_HR_INCEPTION_WEIGHTS)")
    p.add_argument("--cache-dir", default=None, help="real-image statistics cache (default <data>/.fid_cache)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--append-metrics", action="store_true", help="also append the record to the run's metrics.jsonl")
    p.add_argument("--per-class", action="store_true",
                   help="conditional checkpoints: also the SWD of each class, or each attribute value (Smiling=1, "
                        "Smiling=0, ...), against the reals of that group")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; returns the record (metric values and where they come from)."""
    import torch

    from gan_hr.evaluation import Evaluator, per_class_swd
    from gan_hr.inference import load_generator
    from gan_hr.path_args import checkpoint_arg, data_arg, out_dir_arg, saved_data_root
    from gan_hr.training.run_dir import MetricsLog, RunDir

    # Every path argument is checked before anything is loaded.
    data = data_arg(args.data) if args.data is not None else None
    cache_dir = out_dir_arg(args.cache_dir, "--cache-dir") if args.cache_dir is not None else None
    trained = load_generator(checkpoint_arg(args.checkpoint))
    cfg = trained.config
    run_dir = RunDir(trained.path.parent.parent)
    if args.append_metrics and not run_dir.metrics.is_file():
        raise ValueError(f"--append-metrics: {trained.path} is not inside a run directory (no {run_dir.metrics})")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num = args.num if args.num is not None else cfg.train.metrics_num_images
    if data is None:
        data = saved_data_root(cfg)
    evaluator = Evaluator(
        data, args.metric or ["swd"], num_images=num, batch_size=args.batch_size,
        seed=args.seed, device=device, inception_weights=args.inception_weights, cache_dir=cache_dir,
        progress=True, swd_floor=True,
    )
    G = trained.generator.to(device)
    if args.per_class and not cfg.model.conditional:
        raise ValueError("--per-class needs a conditional checkpoint (this one has model.conditional false)")
    values = evaluator(G, trained.resolution, trained.alpha, truncation_psi=args.truncation)
    if args.per_class:
        style = ({"truncation_psi": args.truncation, "noise_mode": "const"}
                 if getattr(G, "supports_style", False) else {})
        values.update(per_class_swd(G, str(data), trained.resolution, trained.alpha, num_images=num, seed=args.seed,
                                    batch_size=args.batch_size, device=device, style_kwargs=style))
    record = {
        "step": trained.meta["step"],
        "kimg": trained.meta["kimg"],
        "resolution": trained.resolution,
        "alpha": trained.alpha,
        **values,
        "num_images": num,
        "truncation_psi": args.truncation,
        "metric_source": "evaluate",
        "checkpoint": str(trained.path),
    }
    if args.append_metrics:
        MetricsLog(run_dir.metrics).append(record)
    return record


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.num is not None and args.num < 2) or args.batch_size < 1:
        print("error: --num must be at least 2 and --batch-size positive", file=sys.stderr)
        return 2
    from gan_hr.checkpoint import CheckpointError

    try:
        record = run(args)
    except CheckpointError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    # MissingInceptionWeights is an OSError: its message says which file, where to get it, how to pass it.
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "swd_floor_mean" in record:
        # Beside the score, what the real set scores against itself (the JSON line below has both).
        print(f"swd_mean {record['swd_mean']:.1f} (real vs real floor {record['swd_floor_mean']:.1f}: the first "
              f"{record['num_images'] // 2} real images against the next {record['num_images'] // 2}; lower is better)",
              file=sys.stderr)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
