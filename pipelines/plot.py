"""PNG plots of a run's metrics.jsonl against kimg, with the resolution phases marked.

    python pipelines/plot.py RUN_DIR [--out DIR]

Writes (into RUN_DIR/plots/ unless --out is given) whichever of these the log has data for:
losses.png (loss_d, loss_g), regularization.png (gp or r1, drift), throughput.png (images/s),
swd.png (swd_mean and each pyramid level), fid.png and kid.png (with kid_std as a band). Metric
values logged during training and those appended by evaluate.py are drawn as separate series.
Each resolution's stretch of training is a band labelled with its resolution. Prints the files
written. Uses matplotlib's Agg renderer, so it needs no display.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan_hr.path_args import out_dir_arg, run_dir_arg  # noqa: E402
from gan_hr.plots import plot_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plot.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    args = p.parse_args(argv)
    try:
        run_dir = run_dir_arg(args.run_dir)
        out = out_dir_arg(args.out) if args.out is not None else None
        written = plot_run(run_dir, out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not written:
        print(f"error: nothing to plot in {args.run_dir}/metrics.jsonl", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
