"""Labels of a conditional model: what the networks take, and where labels come from outside training.

Every conditional network takes a label *vector* per image, float [N, A]: the one-hot of the
class (``kind: class``, A classes) or the 0/1 attribute vector (``kind: attributes``, A
attributes); its embedding is a linear map of that vector, so one code path serves both kinds.
The kind and the names are the data's (its manifest's ``labels``), copied into
``model.label_kind`` and ``model.label_names`` when a run starts, with ``model.label_frequencies``
(the fraction of images in each class, or with each attribute, from the manifest's counts), so a
checkpoint knows them without the data.

In training, fakes take the labels of the real batch beside them (gan_hr.training.trainer).
Outside training (sample grids, metrics, generate.py without --class) labels are drawn from the
frequencies, one seeded generator per sample, so sample i is the same whatever else is drawn with
it. Attributes are then drawn each on its own (the counts hold no correlations between them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gan_hr.config import ModelConfig

__all__ = ["check_labels", "data_labels", "grid_labels", "label_vectors", "labels_from_seeds", "num_labels",
           "parse_label_choice"]

# Seeds of label draws are offset from latent seeds: the two draws of one sample stay independent.
_LABEL_SEED_OFFSET = 0x5EED


def data_labels(manifest: dict) -> tuple[str, list[str], list[float]] | None:
    """(kind, names, frequencies) of a data set's labels by its manifest; None when it has none."""
    labels = manifest.get("labels")
    if labels is None:
        return None
    counts = labels["counts"]
    total = sum(counts) if labels["kind"] == "class" else manifest["num_images"]
    return labels["kind"], list(labels["names"]), [c / max(total, 1) for c in counts]


def num_labels(cfg: ModelConfig) -> int:
    """A in the networks' label input [N, A]; 0 for an unconditional model."""
    if not cfg.conditional:
        return 0
    if not cfg.label_names:
        raise ValueError("model.conditional needs the data's labels (model.label_names is empty: they are filled "
                         "from the data's manifest when a run starts)")
    return len(cfg.label_names)


def check_labels(labels: torch.Tensor | None, num: int, n: int, who: str) -> None:
    """Labels [n, num] for a conditional network (num > 0), none for an unconditional one."""
    if num == 0:
        if labels is not None:
            raise ValueError(f"{who}: this network is unconditional; it takes no labels")
        return
    if labels is None or labels.ndim != 2 or tuple(labels.shape) != (n, num):
        got = None if labels is None else list(labels.shape)
        raise ValueError(f"{who}: a conditional network needs label vectors of shape [{n}, {num}], got {got}")


def label_vectors(labels: torch.Tensor, kind: str, num: int) -> torch.Tensor:
    """A data batch's labels (int64 classes [N] or float 0/1 attributes [N, A]) as float vectors [N, A]."""
    if kind == "class":
        return torch.nn.functional.one_hot(labels.long(), num).float()
    if labels.ndim != 2 or labels.shape[1] != num:
        raise ValueError(f"expected attributes of shape [N, {num}], got {list(labels.shape)}")
    return labels.float()


def labels_from_seeds(seeds: Sequence[int], kind: str, frequencies: Sequence[float]) -> torch.Tensor:
    """Label vectors [len(seeds), A] drawn from the label frequencies (of the classes, or of each
    attribute; `data_labels`, `model.label_frequencies`), one generator per seed."""
    freqs = torch.tensor(frequencies, dtype=torch.float64)
    num = len(frequencies)
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed) + _LABEL_SEED_OFFSET)
        if kind == "class":
            k = int(torch.multinomial(freqs, 1, generator=gen))
            rows.append(torch.nn.functional.one_hot(torch.tensor(k), num).float())
        else:
            rows.append((torch.rand(num, generator=gen, dtype=torch.float64) < freqs).float())
    return torch.stack(rows)


def grid_labels(n: int, cfg: ModelConfig) -> torch.Tensor:
    """Labels of a training sample grid [n, A]: classes in turn (every class shows), or attributes
    drawn as `labels_from_seeds` draws them."""
    if cfg.label_kind == "class":
        return torch.nn.functional.one_hot(torch.arange(n) % num_labels(cfg), num_labels(cfg)).float()
    return labels_from_seeds(range(n), cfg.label_kind, cfg.label_frequencies)


def parse_label_choice(cfg: ModelConfig, class_arg: str | None, attributes_arg: str | None) -> torch.Tensor:
    """generate.py's --class K (an index or a name) or --attributes a=1,b=0 as one label vector [A];
    attributes not named are 0. ValueError (one line) when it does not fit the checkpoint."""
    num = num_labels(cfg)
    names = cfg.label_names
    if class_arg is not None:
        if cfg.label_kind != "class":
            raise ValueError(f"--class: this checkpoint has attributes ({', '.join(names)}); use --attributes")
        index = int(class_arg) if class_arg.isdigit() else names.index(class_arg) if class_arg in names else -1
        if not 0 <= index < num:
            raise ValueError(f"--class {class_arg}: not a class of this checkpoint ({', '.join(names)}, "
                             f"or 0-{num - 1})")
        return torch.nn.functional.one_hot(torch.tensor(index), num).float()
    if cfg.label_kind != "attributes":
        raise ValueError(f"--attributes: this checkpoint has classes ({', '.join(names)}); use --class")
    vector = torch.zeros(num)
    for item in filter(None, (s.strip() for s in attributes_arg.split(","))):
        name, _, value = item.partition("=")
        if name not in names or value not in ("0", "1"):
            raise ValueError(f"--attributes {item}: expected NAME=0 or NAME=1 with NAME one of {', '.join(names)}")
        vector[names.index(name)] = float(value)
    return vector
