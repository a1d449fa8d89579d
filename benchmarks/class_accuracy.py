"""Does a conditional generator draw the class it is asked for: a small CNN trained on a labelled
data set's reals puts each run's fakes of class k in a class, and the share put in k is the
score (chance is 1 / classes). The CNN's accuracy on held-out reals says how far to trust it.

    python benchmarks/class_accuracy.py --data DIR RUN [RUN ...] [--resolution 32] [--num 600]
        [--epochs 30] [--json FILE]

DIR is a data set with class labels (`data_prep --labels shapes|folders|FILE`); each RUN a run
directory or checkpoint of a class-conditional generator trained on it. The first quarter of the
reals (at most 512) is held out; fake i is of class i mod classes, from seed i. Prints a table
and writes JSON (default benchmarks/out/class_accuracy.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from learning import ROOT, cpu_description

sys.path.insert(0, str(ROOT))

from gan_hr.data import load_manifest, make_loader  # noqa: E402
from gan_hr.inference import load_generator  # noqa: E402
from gan_hr.labels import data_labels  # noqa: E402
from gan_hr.sampling import latents_from_seeds, to_uint8  # noqa: E402


def classifier(classes: int) -> nn.Module:
    """Three 3x3 conv layers and a global max pool: small enough to train in a minute on a CPU,
    and it reads shapes, not only colours."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, classes),
    )


def to_input(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def train_classifier(data: str, resolution: int, epochs: int) -> tuple[nn.Module, int, float, int]:
    """(CNN, classes, accuracy on held-out reals, held-out count), trained on the rest."""
    manifest = load_manifest(data)
    labels = data_labels(manifest)
    if labels is None or labels[0] != "class":
        raise SystemExit(f"error: {data} has no class labels")
    count = manifest["num_images"]
    batches = iter(make_loader(data, resolution, count, seed=0, num_workers=0, labels=True))
    batch = next(batches)
    x, y = to_input(batch["image"]), batch["label"]
    held = min(512, len(x) // 4)
    train_x, train_y = x[held:], y[held:]
    net = classifier(len(labels[1]))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_x)).split(64):
            xb = train_x[idx].flip(3) if torch.rand(()) < 0.5 else train_x[idx]  # mirroring keeps the class
            loss = nn.functional.cross_entropy(net(xb), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[:held]).argmax(1) == y[:held]).float().mean().item()
    return net, len(labels[1]), accuracy, held


def fake_accuracy(net: nn.Module, run: str, classes: int, resolution: int, num: int) -> list[float]:
    """Per class: the share of its fakes the CNN puts in it."""
    G = load_generator(run).generator
    asked = torch.arange(num) % classes
    style = {"noise_mode": "const"} if getattr(G, "supports_style", False) else {}
    with torch.no_grad():
        fakes = to_uint8(G(latents_from_seeds(range(num), G.latent_dim), resolution,
                           labels=torch.eye(classes)[asked], **style))
        predicted = net(to_input(fakes)).argmax(1)
    return [(predicted[asked == k] == k).float().mean().item() for k in range(classes)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the labelled data set the runs trained on")
    p.add_argument("runs", nargs="+", help="run directories or checkpoints of conditional generators")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--num", type=int, default=600, help="fakes per run")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--json", default="benchmarks/out/class_accuracy.json")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    net, classes, real_accuracy, held = train_classifier(args.data, args.resolution, args.epochs)
    names = data_labels(load_manifest(args.data))[1]
    rows = [{"run": run, "per_class": dict(zip(names, fake_accuracy(net, run, classes, args.resolution, args.num)))}
            for run in args.runs]
    for r in rows:
        r["accuracy"] = sum(r["per_class"].values()) / classes
    print(f"CNN on {held} held-out reals: {real_accuracy:.3f} (chance {1 / classes:.3f}); {cpu_description()}\n")
    print("| run | fakes in the class asked for | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * classes)
    for r in rows:
        print(f"| {r['run']} | {r['accuracy']:.3f} | " + " | ".join(f"{v:.2f}" for v in r["per_class"].values()) + " |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "resolution": args.resolution, "num": args.num,
                               "real_accuracy": real_accuracy, "held_out": held, "chance": 1 / classes,
                               "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
