"""Images from a checkpoint's EMA generator: a grid, one PNG per sample, a style-mixing grid,
an interpolation strip or a truncation sweep. Mixing, truncation and --truncation need a
StyleGAN checkpoint; grids and interpolation work for every model. A VAE's generator is its
decoder: z ~ N(0, I) -> image, samples from the prior.

examples:
  python pipelines/generate.py --checkpoint P --out F.png [--num N] [--seed S] [--truncation PSI]
  python pipelines/generate.py --checkpoint P --out samples/ --num 1000     # seed0000.png, ...
  python pipelines/generate.py --checkpoint P --out mix.png --mode mixing --mix-layers coarse
  python pipelines/generate.py --checkpoint P --out lerp.png --mode interpolation --seed 3 --seed-to 7
  python pipelines/generate.py --checkpoint P --out psi.png --mode truncation  # prints the psi of each column
  python pipelines/generate.py --checkpoint P --out squares.png --class square     # conditional: one class
  python pipelines/generate.py --checkpoint P --out f.png --attributes smiling=1,male=0

Sample i is drawn from seed S + i alone (and StyleGAN's noise inputs are fixed), so the same
seed gives the same image whatever --num or --batch-size is. A conditional checkpoint's samples
take the label given by --class (an index or a name) or --attributes (attributes not named are
0); without either, sample i's label is drawn from the training data's label frequencies with
seed S + i (attributes each on their own). Conditional StyleGAN truncation pulls towards the
sample's own class centre.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# torch and gan_hr are imported in run(), after the arguments are parsed, so that --help and
# usage errors answer at once.
MODES = ("grid", "mixing", "interpolation", "truncation")
TRUNCATION_PSIS = (1.0, 0.85, 0.7, 0.5, 0.25, 0.0)  # the columns of --mode truncation, left to right


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, a checkpoints/ folder or a run directory")
    p.add_argument("--out", required=True, help="F.png for one image; DIR/ (or an existing directory) for one PNG per sample")
    p.add_argument("--mode", choices=MODES, default="grid",
                   help="grid: --num samples (default); mixing: style-mixing grid (StyleGAN); interpolation: a "
                        "strip from --seed to --seed-to; truncation: rows of samples at psi "
                        + ", ".join(map(str, TRUNCATION_PSIS)) + " (StyleGAN)")
    p.add_argument("--num", type=int, default=16, help="samples (grid), columns (mixing) or rows (truncation)")
    p.add_argument("--seed", type=int, default=0,
                   help="sample i comes from seed S + i (default 0); the same seed always gives the same image")
    p.add_argument("--truncation", type=float, default=None,
                   help="StyleGAN truncation psi (default: the config's model.truncation_psi)")
    p.add_argument("--truncation-cutoff", type=int, default=None, help="layers truncated (default: the config's)")
    p.add_argument("--rows", type=int, default=3, help="mixing: row sources")
    p.add_argument("--mix-layers", default="coarse",
                   help="mixing: coarse (4²-8²), middle (16²-32²), fine (64² up), or a range of w indices like 0-3")
    p.add_argument("--seed-to", type=int, default=None, help="interpolation: the end seed (default seed + 1)")
    p.add_argument("--steps", type=int, default=8, help="interpolation: images in the strip")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per generator forward (default 16); changes speed and memory, not the images")
    p.add_argument("--no-ema", action="store_true", help="use G instead of the EMA generator")
    label = p.add_mutually_exclusive_group()
    label.add_argument("--class", dest="class_", default=None, metavar="K",
                       help="conditional checkpoints: every sample of class K (an index or a name)")
    label.add_argument("--attributes", default=None, metavar="A=1,B=0",
                       help="conditional checkpoints with attributes: the attributes of every sample (others 0)")
    return p


def sample_labels(trained, seeds, args):
    """Label vectors [len(seeds), A] for a conditional checkpoint's samples (None for an
    unconditional one): --class / --attributes, else drawn per seed from the data's frequencies."""
    from gan_hr.labels import labels_from_seeds, parse_label_choice

    m = trained.config.model
    chosen = args.class_ is not None or args.attributes is not None
    if not m.conditional:
        if chosen:
            raise ValueError(f"{'--class' if args.class_ is not None else '--attributes'} needs a conditional "
                             "checkpoint (this one has model.conditional false)")
        return None
    seeds = list(seeds)
    if chosen:
        return parse_label_choice(m, args.class_, args.attributes).expand(len(seeds), -1).clone()
    return labels_from_seeds(seeds, m.label_kind, m.label_frequencies)


def mixing_layers(spec: str, num_ws: int) -> range:
    """w indices for a named band (two ws per resolution from 4²) or an explicit 'a-b'."""
    bands = {"coarse": range(0, 4), "middle": range(4, 8), "fine": range(8, num_ws)}
    if spec in bands:
        layers = bands[spec]
    else:
        lo, _, hi = spec.partition("-")
        layers = range(int(lo), int(hi or lo) + 1)
    layers = range(layers.start, min(layers.stop, num_ws))
    if not layers:
        raise ValueError(f"--mix-layers {spec}: no style layer in range at this resolution ({num_ws} layers)")
    return layers


def run(args: argparse.Namespace) -> Path:
    import torch
    from PIL import Image

    from gan_hr.inference import load_generator
    from gan_hr.path_args import checkpoint_arg, image_file_arg, out_dir_arg
    from gan_hr.sampling import (
        interpolate_latents,
        interpolate_w,
        latents_from_seeds,
        save_grid,
        style_mixing_grid,
        to_uint8,
        truncation_grid,
    )

    # Every path argument is checked before anything is loaded or written. A grid goes to one
    # PNG per sample when --out names a directory (an existing one, or one ending in /).
    per_sample = args.mode == "grid" and (args.out.endswith("/") or Path(args.out).is_dir())
    out = out_dir_arg(args.out) if per_sample else image_file_arg(args.out)
    trained = load_generator(checkpoint_arg(args.checkpoint), use_ema=not args.no_ema)
    G = trained.generator
    style = getattr(G, "supports_style", False)
    psi = args.truncation if args.truncation is not None else (trained.config.model.truncation_psi if style else 1.0)
    if not style and (psi != 1.0 or args.mode in ("mixing", "truncation")):
        raise ValueError(f"{args.mode if args.mode != 'grid' else '--truncation'} needs a StyleGAN checkpoint "
                         f"(this one is {trained.config.model.name})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G.to(device)
    style_kwargs = {"truncation_psi": psi, "truncation_cutoff": args.truncation_cutoff, "noise_mode": "const"}
    res, alpha = trained.resolution, trained.alpha

    if args.mode == "grid":
        seeds = list(range(args.seed, args.seed + args.num))
        images = _generate(trained, latents_from_seeds(seeds, G.latent_dim), args.batch_size, style_kwargs,
                           sample_labels(trained, seeds, args))
        if per_sample:
            out.mkdir(parents=True, exist_ok=True)
            for seed, image in zip(seeds, to_uint8(images)):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / f"seed{seed:04d}.png")
            return out
        save_grid(images, out)
        return out
    if args.mode == "mixing":
        col_seeds = range(args.seed, args.seed + args.num)
        row_seeds = range(args.seed + args.num, args.seed + args.num + args.rows)
        cols, rows = latents_from_seeds(col_seeds, G.latent_dim), latents_from_seeds(row_seeds, G.latent_dim)
        layers = mixing_layers(args.mix_layers, G.num_ws_at(res))
        with torch.no_grad():
            images = style_mixing_grid(G, cols, rows, layers, res, alpha, truncation_psi=psi,
                                       truncation_cutoff=args.truncation_cutoff, batch_size=args.batch_size,
                                       col_labels=sample_labels(trained, col_seeds, args),
                                       row_labels=sample_labels(trained, row_seeds, args))
        save_grid(images, out, nrow=args.num + 1)
    elif args.mode == "interpolation":
        end = args.seed_to if args.seed_to is not None else args.seed + 1
        z0, z1 = latents_from_seeds([args.seed, end], G.latent_dim)
        ends = sample_labels(trained, [args.seed, end], args)
        with torch.no_grad():
            if style:
                images = interpolate_w(G, z0, z1, args.steps, res, alpha, truncation_psi=psi,
                                       truncation_cutoff=args.truncation_cutoff, batch_size=args.batch_size,
                                       labels=ends)
            else:
                # A conditional strip also goes linearly from one end's label vector to the other's.
                t = torch.linspace(0.0, 1.0, args.steps)[:, None]
                labels = torch.lerp(ends[0:1], ends[1:2], t) if ends is not None else None
                images = _generate(trained, interpolate_latents(z0, z1, args.steps), args.batch_size, style_kwargs,
                                   labels)
        save_grid(images, out, nrow=args.steps)
    else:
        psis = list(TRUNCATION_PSIS)
        seeds = range(args.seed, args.seed + args.num)
        z = latents_from_seeds(seeds, G.latent_dim)
        with torch.no_grad():
            images = truncation_grid(G, z, psis, res, alpha, truncation_cutoff=args.truncation_cutoff,
                                     batch_size=args.batch_size, labels=sample_labels(trained, seeds, args))
        save_grid(images, out, nrow=len(psis))
        print(f"columns, left to right: psi {' '.join(map(str, psis))}; rows: seeds {args.seed} .. "
              f"{args.seed + args.num - 1}")
    return out


def _generate(trained, z, batch_size: int, style_kwargs: dict, labels=None):
    """Images of latents ``z`` (with label vectors for a conditional checkpoint) in batches, on the CPU."""
    import torch

    from gan_hr.inference import generate

    device = next(trained.generator.parameters()).device
    label_chunks = labels.split(batch_size) if labels is not None else [None] * len(z.split(batch_size))
    chunks = [generate(trained, chunk.to(device), y, **style_kwargs).float().cpu()
              for chunk, y in zip(z.split(batch_size), label_chunks)]
    return torch.cat(chunks)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.num < 1 or args.steps < 2 or args.batch_size < 1:
        print("error: --num and --batch-size must be positive, --steps at least 2", file=sys.stderr)
        return 2
    from gan_hr.checkpoint import CheckpointError

    try:
        out = run(args)
    except CheckpointError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
