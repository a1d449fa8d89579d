"""Conditional GANs (model.conditional): every model trains through the real entry points on the
labelled built-in set, generate.py --class and evaluate.py --per-class use what the checkpoint
knows, unlabelled data and a flipped key are refused, resume stays bit-exact; and the label
plumbing (one-hot and attribute vectors, draws per seed, per-class truncation centres) on its own."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import ROOT, assert_same_state, checkpoints, cpu_env, meta, metrics, train

from gan_hr.config import ModelConfig
from gan_hr.labels import label_vectors, labels_from_seeds, parse_label_choice
from gan_hr.models import build_discriminator, build_generator

sys.path.insert(0, str(ROOT / "pipelines"))
import generate  # noqa: E402

SHAPES = ["disc", "square", "triangle"]
BASELINE = ["schedule.start_res=32", "schedule.max_res=32", "model.base_width=8", "model.latent_dim=16",
            "schedule.batch_size=8", "data.num_workers=0", "train.log_every_steps=1", "train.sample_grid=6",
            "train.checkpoint_every_kimg=1000", "train.sample_every_kimg=1000", "train.final_swd=false"]


def _tiny_model(name: str, kind: str = "class", names: list[str] | None = None) -> ModelConfig:
    names = names or SHAPES
    return ModelConfig(name=name, latent_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                       base_width=8, conditional=True, label_kind=kind, label_names=names,
                       label_frequencies=[1 / len(names)] * len(names))


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("name, res", [("dcgan", 32), ("progan", 16), ("stylegan", 16)])
@pytest.mark.parametrize("kind", ["class", "attributes"])
def test_models_take_classes_and_attributes(name, res, kind):
    torch.manual_seed(0)
    cfg = _tiny_model(name, kind, SHAPES if kind == "class" else ["smiling", "male"])
    G, D = build_generator(cfg, res).eval(), build_discriminator(cfg, res)
    raw = torch.tensor([0, 1, 2, 0]) if kind == "class" else torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    y = label_vectors(raw, kind, len(cfg.label_names))
    z = torch.randn(4, 16)
    images = G(z, res, 1.0, labels=y)
    assert images.shape == (4, 3, res, res)
    # The labels reach both networks' outputs.
    other = y.flip(0)
    assert not torch.allclose(G(z, res, 1.0, labels=other), images)
    scores = D(images, res, 1.0, labels=y)
    assert scores.shape == (4,) and not torch.allclose(D(images, res, 1.0, labels=other), scores)
    scores.sum().backward()
    assert all(p.grad is not None for n, p in D.named_parameters() if "embed" in n)
    with pytest.raises(ValueError, match="conditional network needs label vectors"):
        G(z, res, 1.0)


def test_unconditional_models_refuse_labels():
    cfg = ModelConfig(name="progan", latent_dim=16, channel_base=128, channel_max=16)
    with pytest.raises(ValueError, match="unconditional"):
        build_generator(cfg, 8)(torch.randn(2, 16), 8, labels=torch.zeros(2, 3))


def test_stylegan_truncates_towards_each_class_centre():
    torch.manual_seed(0)
    G = build_generator(_tiny_model("stylegan"), 8).train()
    y = label_vectors(torch.tensor([0, 0, 2, 2]), "class", 3)
    G(torch.randn(4, 16), 8, labels=y)
    # Classes 0 and 2 moved off zero, class 1 (not in the batch) did not.
    assert G.w_avg_class[0].abs().sum() > 0 and G.w_avg_class[2].abs().sum() > 0
    assert G.w_avg_class[1].abs().sum() == 0
    assert "w_avg_class" in G.state_dict() and "w_avg_class" in G.tracked_buffers
    G.eval()
    ws = torch.randn(4, G.num_ws, 16)
    centred = G.truncate(ws, 0.0, 0, labels=y)
    assert torch.equal(centred[0, 0], G.w_avg_class[0]) and torch.equal(centred[3, -1], G.w_avg_class[2])


def test_labels_from_seeds_and_label_choices():
    a = labels_from_seeds(range(100), "class", [0.5, 0.5, 0.0])
    assert torch.equal(a[40:50], labels_from_seeds(range(40, 50), "class", [0.5, 0.5, 0.0]))  # per seed
    assert a[:, 2].sum() == 0 and 30 < a[:, 0].sum() < 70 and torch.equal(a.sum(1), torch.ones(100))
    attrs = labels_from_seeds(range(200), "attributes", [0.9, 0.1])
    assert attrs[:, 0].mean() > 0.8 and attrs[:, 1].mean() < 0.2
    cfg = _tiny_model("progan")
    assert torch.equal(parse_label_choice(cfg, "square", None), torch.tensor([0.0, 1, 0]))
    assert torch.equal(parse_label_choice(cfg, "2", None), torch.tensor([0.0, 0, 1]))
    with pytest.raises(ValueError, match="not a class of this checkpoint"):
        parse_label_choice(cfg, "hexagon", None)
    with pytest.raises(ValueError, match="use --class"):
        parse_label_choice(cfg, None, "smiling=1")
    acfg = _tiny_model("progan", "attributes", ["smiling", "male", "young"])
    assert torch.equal(parse_label_choice(acfg, None, "smiling=1,young=1"), torch.tensor([1.0, 0, 1]))
    with pytest.raises(ValueError, match="expected NAME=0 or NAME=1"):
        parse_label_choice(acfg, None, "smiling=yes")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dcgan", "progan", "stylegan"])
def test_conditional_model_trains_and_generates_a_class(tmp_path, labelled_data, model):
    run = tmp_path / "run"
    if model == "dcgan":
        train(run, labelled_data, *BASELINE, "model.conditional=true", "train.max_steps=4", script="train_baseline.py",
              config="configs/cdcgan_shapes.yaml", tiny=False)
    else:
        train(run, labelled_data, f"model.name={model}", "model.conditional=true", "train.max_steps=10")
    assert [r["step"] for r in metrics(run)] == list(range(1, 5 if model == "dcgan" else 11))
    saved = meta(checkpoints(run)[-1])["config"]["model"]
    assert saved["conditional"] and saved["label_kind"] == "class" and saved["label_names"] == SHAPES
    assert sum(saved["label_frequencies"]) == pytest.approx(1.0)
    out = tmp_path / "squares"
    assert generate.main(["--checkpoint", str(run), "--out", f"{out}/", "--num", "3", "--class", "square"]) == 0
    squares = [np.asarray(Image.open(out / f"seed000{i}.png")) for i in range(3)]
    assert generate.main(["--checkpoint", str(run), "--out", f"{tmp_path / 'discs'}/", "--num", "3",
                          "--class", "0"]) == 0
    discs = [np.asarray(Image.open(tmp_path / "discs" / f"seed000{i}.png")) for i in range(3)]
    # Same seeds, another class: other images.
    assert not any(np.array_equal(s, d) for s, d in zip(squares, discs))
    assert generate.main(["--checkpoint", str(run), "--out", str(tmp_path / "grid.png"), "--num", "4"]) == 0
    if model == "dcgan":
        proc = subprocess.run([sys.executable, "pipelines/evaluate.py", "--checkpoint", str(run), "--data",
                               str(labelled_data), "--num", "16", "--per-class"],
                              cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads(proc.stdout.splitlines()[-1])
        assert all(record[f"swd_mean_{name}"] > 0 and record[f"num_images_{name}"] == 16 for name in SHAPES)


@pytest.mark.slow
def test_per_class_swd_of_attribute_data_is_per_attribute_value(tmp_path):
    """evaluate.py --per-class on multi-label data: one SWD per value of each attribute, each
    group's fakes given the labels of that group's reals (the other attributes as in the data)."""
    from data_prep import prepare

    from gan_hr.evaluation import per_class_swd

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / f"{i}.png")
        rows.append(f"{i}.png {1 if i % 2 else -1} {1 if i % 3 == 0 else -1}")
    table = tmp_path / "attributes.txt"
    table.write_text(f"{len(rows)}\nSmiling Young\n" + "\n".join(rows) + "\n")
    data = tmp_path / "data"
    prepare(str(src), data, max_res=32, shard_size=64, workers=1, progress=False, labels=str(table))
    sizes = {"Smiling=1": 12, "Smiling=0": 12, "Young=1": 8, "Young=0": 16}

    class Recorder(torch.nn.Module):
        num_labels, latent_dim = 2, 4

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))
            self.calls: list[torch.Tensor] = []

        def forward(self, z, res, alpha, labels):
            self.calls.append(labels)
            return torch.zeros(len(z), 3, res, res)

    G = Recorder()
    record = per_class_swd(G, str(data), 32, num_images=16, batch_size=64)
    assert {k: v for k, v in record.items() if k.startswith("num_images_")} == {f"num_images_{g}": n
                                                                               for g, n in sizes.items()}
    smiling_1, smiling_0, young_1, young_0 = G.calls
    assert (smiling_1[:, 0] == 1).all() and (smiling_0[:, 0] == 0).all()
    assert (young_1[:, 1] == 1).all() and (young_0[:, 1] == 0).all()
    # Young=1 are images 0, 3, ..., 21: half of them smile, as in the data; not all 0 or all 1.
    assert young_1[:, 0].sum() == 4

    run = tmp_path / "run"
    train(run, data, *BASELINE, "model.conditional=true", "train.max_steps=2", script="train_baseline.py",
          config="configs/cdcgan_shapes.yaml", tiny=False)
    proc = subprocess.run([sys.executable, "pipelines/evaluate.py", "--checkpoint", str(run), "--num", "16",
                           "--per-class"], cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.splitlines()[-1])
    for group, n in sizes.items():
        assert record[f"swd_mean_{group}"] > 0 and record[f"num_images_{group}"] == n


@pytest.mark.slow
def test_conditional_on_unlabelled_data_is_one_line_and_writes_nothing(tmp_path, synthetic_data):
    run = tmp_path / "run"
    proc = train(run, synthetic_data, "model.conditional=true", "train.max_steps=2", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(f"error: model.conditional: the data in {synthetic_data} has no labels")
    assert not run.exists()


@pytest.mark.slow
def test_conditional_resume_is_bit_exact_and_keeps_the_key(tmp_path, labelled_data):
    """ProGAN, 20 steps straight == 12 (mid-fade into 8²), resume, 20; then resuming with
    model.conditional flipped off is refused in one line."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["model.conditional=true", "data.num_workers=1"]
    train(straight, labelled_data, "train.max_steps=20", *common)
    train(split, labelled_data, "train.max_steps=12", *common)
    train(split, labelled_data, "train.max_steps=20", *common, resume="auto")
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
    proc = train(split, labelled_data, "train.max_steps=22", resume="auto", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "would change the networks (model.conditional True -> False" in proc.stderr


# --------------------------------------------------------------------------- learning


def _colour_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> the mean colour of each 8x8 tile [N, 48]."""
    return torch.nn.functional.avg_pool2d(images.float() / 255, 8).flatten(1)


@pytest.mark.slow
def test_conditional_dcgan_draws_the_class_it_is_given(tmp_path, repo_root):
    """A short conditional DCGAN run (configs/cdcgan_shapes.yaml at lr 1e-3, 8 kimg, 40-90 s on
    one thread) makes samples of each class that a classifier trained on the reals
    (nearest class mean of 8x8-tile colours; 100% on held-out reals) puts in that class.

    The classes are the built-in images' backgrounds (data_prep --labels backgrounds), not their
    shapes: the shape classes (the kind of the first shape) are not learned in minutes on a CPU
    (benchmarks/class_accuracy.py: chance, README "Conditional GANs"). With backgrounds, over
    train.seed 0-2: 1.000 of 300 fakes in the class asked for, each (chance 0.25); asserted above
    0.8."""
    from gan_hr.data import make_loader
    from gan_hr.inference import load_generator
    from gan_hr.sampling import latents_from_seeds, to_uint8

    from data_prep import prepare

    data, run = tmp_path / "data", tmp_path / "run"
    prepare("synthetic:1024", data, max_res=32, shard_size=256, workers=1, progress=False, labels="backgrounds")
    subprocess.run([sys.executable, "pipelines/train_baseline.py", "--config", "configs/cdcgan_shapes.yaml",
                    "--run-dir", str(run), f"data.path={data}", "train.total_kimg=8", "schedule.lr=0.001",
                    "data.num_workers=0", "train.final_swd=false", "train.checkpoint_every_kimg=8",
                    "train.sample_every_kimg=8"], cwd=repo_root, env=cpu_env(), check=True, capture_output=True,
                   timeout=600)
    batches = iter(make_loader(str(data), 32, 256, seed=0, num_workers=0, labels=True))
    images, labels = zip(*[(b["image"], b["label"]) for b in (next(batches) for _ in range(4))])
    x, y = _colour_features(torch.cat(images)), torch.cat(labels)
    classes = int(y.max()) + 1
    centres = torch.stack([x[:768][y[:768] == k].mean(0) for k in range(classes)])

    def classify(features: torch.Tensor) -> torch.Tensor:
        return torch.cdist(features, centres).argmin(1)

    assert (classify(x[768:]) == y[768:]).float().mean() > 0.95  # the classifier works on reals
    trained = load_generator(run)
    asked = torch.arange(300) % classes
    with torch.no_grad():
        fakes = to_uint8(trained.generator(latents_from_seeds(range(300), trained.generator.latent_dim), 32,
                                           labels=torch.eye(classes)[asked]))
    accuracy = (classify(_colour_features(fakes)) == asked).float().mean().item()
    print(f"accuracy on fakes {accuracy:.3f} (chance {1 / classes:.2f})")
    assert accuracy > 0.8
