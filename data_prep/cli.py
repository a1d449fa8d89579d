"""Command line: python -m data_prep --src SRC --out DIR ... | --verify DIR.

Exit status: 0 when the dataset was written (even if some inputs were skipped) or verified;
1 when no input was usable or --verify found a problem; 2 for usage errors (bad options, a
missing or unreadable SRC or one that is a FIFO or device, an --out that is a file or is
unwritable, an --out holding a different preparation, a --labels table that cannot be read as one
or a --label-columns name it lacks: nothing is written then);
130 when interrupted with Ctrl-C (the same command resumes).
"""

from __future__ import annotations

import argparse
import sys
import time

from data_prep.errors import NoUsableImages, PrepError
from data_prep.files import DEFAULT_MAX_FILE_MB
from data_prep.images import DEFAULT_MAX_PIXELS, FORMATS
from data_prep.labels import parse_columns
from data_prep.pipeline import run_prepare
from data_prep.verify import verify

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_MAX_RES = 1024
# The built-in set is for small runs (the demo trains at 32²): shapes at 1024² would only cost disk.
SYNTHETIC_DEFAULT_MAX_RES = 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Turn a folder, a .zip or synthetic:N into per-resolution tar shards.",
        epilog="examples:\n"
               "  python -m data_prep --src CelebA-HQ-img --out data/celebahq --max-res 1024\n"
               "  python -m data_prep --src synthetic:2048 --out data/synthetic/synthetic-2048-32 --shard-size 256\n"
               "      (the demo's set, where its trainer looks: 2048 images, 32² down to 4²)\n"
               "  python -m data_prep --verify data/celebahq",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of images (recursive), a .zip, or synthetic:N (N generated images of "
                                 "shapes, the built-in set)")
    p.add_argument("--out", help="output folder (manifest.json and <res>/shard-*.tar)")
    p.add_argument("--max-res", type=int, default=None,
                   help=f"largest resolution (default {DEFAULT_MAX_RES}; {SYNTHETIC_DEFAULT_MAX_RES} for synthetic:N)")
    p.add_argument("--min-res", type=int, default=4, help="smallest resolution (default 4)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: every available core)")
    p.add_argument("--format", dest="image_format", choices=sorted(FORMATS), default="png",
                   help="image format inside the shards (default png)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set (default 0)")
    p.add_argument("--allow-upscale", action="store_true",
                   help="upscale images smaller than --max-res instead of skipping them")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject images with more pixels as decompression bombs "
                        f"(default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-file-mb", type=int, default=DEFAULT_MAX_FILE_MB,
                   help="skip input files and zip members larger than this many MB (2**20 "
                        "bytes); reading stops there whatever size a file claims "
                        f"(default {DEFAULT_MAX_FILE_MB})")
    p.add_argument("--labels", metavar="folders|shapes|backgrounds|FILE",
                   help="store a label with every image: 'folders' (class = first folder below "
                        "--src), 'shapes' or 'backgrounds' (synthetic:N: the kind of the first "
                        "shape, or the background's colours), or a table FILE "
                        "keyed by file name (CSV with a header, or whitespace-separated like "
                        "CelebA's attribute file); images without a label are skipped")
    p.add_argument("--label-columns", metavar="A,B,...",
                   help="the table's columns to use, in this order (default all); one column "
                        "gives classes, several a 0/1 attribute vector")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verify", metavar="DIR",
                   help="check DIR's shards against its manifest (after preparing, if --src)")
    return p


def _prepare(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.max_res is None:
        args.max_res = SYNTHETIC_DEFAULT_MAX_RES if args.src.startswith("synthetic:") else DEFAULT_MAX_RES
    try:
        result = run_prepare(
            args.src, args.out, max_res=args.max_res, min_res=args.min_res,
            shard_size=args.shard_size, workers=args.workers, image_format=args.image_format,
            jpeg_quality=args.jpeg_quality, seed=args.seed, allow_upscale=args.allow_upscale,
            progress=not args.no_progress, max_pixels=args.max_pixels,
            max_file_mb=args.max_file_mb, labels=args.labels,
            label_columns=parse_columns(args.label_columns))
    except KeyboardInterrupt:
        print("data_prep: interrupted; finished shards are kept, run the same command again "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NoUsableImages as exc:
        print(f"data_prep: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PrepError as exc:
        print(f"data_prep: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - t0
    m = result.manifest
    note = (" (already prepared, nothing to do)" if result.reused
            else f" ({result.processed / max(elapsed, 1e-9):.0f} inputs/s)")
    print(f"data_prep: {m['num_images']} images written, {len(m['skipped'])} skipped, "
          f"{elapsed:.1f} s{note} -> {args.out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.src is None and args.verify is None:
        print("data_prep: error: give --src and --out, or --verify DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.src is not None:
        if args.out is None:
            print("data_prep: error: --src needs --out", file=sys.stderr)
            return EXIT_USAGE
        status = _prepare(args)
        if status != EXIT_OK:
            return status
    if args.verify is not None:
        report = verify(args.verify, workers=args.workers)
        for line in report.errors:
            print(f"  {line}")
        print(report.summary)
        return EXIT_OK if report.ok else EXIT_FAILED
    return EXIT_OK
