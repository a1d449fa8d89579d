"""PNG plots of a run's metrics.jsonl against kimg, with the resolution phases marked.

Whichever of these the log has data for: losses.png (loss_d, loss_g), vae.png (loss_vae, recon, kl), regularization.png
(gp or r1 on the left axis, the drift term E[D(real)²] on its own right axis: it is orders of
magnitude larger and enters the loss times loss.drift), throughput.png (images/s), swd.png (swd_mean and each pyramid level), fid.png
and kid.png (with kid_std as a band). Metric values logged during training and those appended
by evaluate.py are drawn as separate series. Each resolution's stretch of training is a band
labelled with its resolution. matplotlib's Agg renderer: no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from gan_hr.training.run_dir import RunDir, read_metrics

Record = dict[str, Any]
Span = tuple[float, float, int]  # start kimg, end kimg, resolution

# (file, title, y label, which keys): training-log panels take fixed keys, metric panels a prefix.
PANELS: list[tuple[str, str, str, Callable[[str], bool]]] = [
    ("losses.png", "Losses", "loss", lambda k: k in ("loss_d", "loss_g")),
    ("vae.png", "VAE loss per image: recon + beta * KL", "loss", lambda k: k in ("loss_vae", "recon", "kl")),
    ("regularization.png", "Gradient penalty and drift", "penalty (gp or r1)", lambda k: k in ("gp", "r1", "drift")),
    ("throughput.png", "Throughput", "images / s", lambda k: k == "images_per_s"),
    ("swd.png", "Sliced Wasserstein distance (x 1e3)", "SWD", lambda k: k.startswith("swd_")),
    ("fid.png", "FID", "FID", lambda k: k == "fid"),
    ("kid.png", "KID", "KID", lambda k: k == "kid"),
]
# Keys drawn on a second y axis of their own when they share a panel, with its label: raw
# E[D(real)²] is ~1e3 times the penalty's scale (it is weighted by loss.drift = 0.001), so on one
# axis the penalty would be a flat line at zero.
OWN_AXIS = {"drift": "drift E[D(real)²] (enters the loss × loss.drift)"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _source(record: Record) -> str:
    return record.get("metric_source", "training")


def resolution_spans(records: list[Record]) -> list[Span]:
    """(start kimg, end kimg, resolution) of each stretch of training at one resolution.

    A stretch ends at its last record: the trainer logs at the end of every phase."""
    points = sorted(
        (k, int(r["resolution"])) for r in records
        if (k := _number(r.get("kimg"))) is not None and _number(r.get("resolution")) is not None
    )
    spans: list[Span] = []
    for kimg, res in points:
        if spans and spans[-1][2] == res:
            spans[-1] = (spans[-1][0], kimg, res)
        else:
            spans.append((spans[-1][1] if spans else 0.0, kimg, res))
    return spans


def _series(records: list[Record], key: str) -> dict[str, tuple[list[float], list[float], list[Record]]]:
    """key's (kimg, value, record) points by source, in kimg order."""
    by_source: dict[str, tuple[list[float], list[float], list[Record]]] = {}
    for record in sorted(records, key=lambda r: _number(r.get("kimg")) or 0.0):
        kimg, value = _number(record.get("kimg")), _number(record.get(key))
        if kimg is None or value is None:
            continue
        xs, ys, rs = by_source.setdefault(_source(record), ([], [], []))
        xs.append(kimg)
        ys.append(value)
        rs.append(record)
    return by_source


def _mark_resolutions(ax: Axes, spans: list[Span]) -> None:
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (start, end, res) in enumerate(spans):
        if i % 2:
            ax.axvspan(start, end, color="0.9", zorder=0)
        if i:
            ax.axvline(start, color="0.5", linestyle="--", linewidth=0.8, zorder=1)
        ax.text((start + end) / 2, 0.98, f"{res}²", transform=top, ha="center", va="top", fontsize=8, color="0.3")


def plot_panel(records: list[Record], spans: list[Span], path: Path, title: str, ylabel: str, keys: list[str]) -> None:
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    sources = {s for key in keys for s in _series(records, key)}
    own = [k for k in keys if k in OWN_AXIS] if len(keys) > 1 else []
    right = ax.twinx() if own else None
    if right is not None:
        right.set_ylabel(", ".join(OWN_AXIS[k] for k in own))
    colors = iter(f"C{i}" for i in range(100))
    for key in keys:
        target = right if key in own else ax
        for source, (xs, ys, rs) in _series(records, key).items():
            label = key if len(sources) == 1 else f"{key} ({source})"
            if key in own:
                label += " (right axis)"
            # Sparse points (metrics, short runs) need markers; dense training logs read better as lines.
            style = {"marker": "o", "markersize": 3} if len(xs) < 30 else {}
            thin = key.startswith("swd_") and key != "swd_mean"
            line, = target.plot(xs, ys, label=label, linewidth=0.8 if thin else 1.4, alpha=0.6 if thin else 1.0,
                                color=next(colors), **style)
            if key == "kid":
                std = [_number(r.get("kid_std")) for r in rs]
                if all(s is not None for s in std):
                    ax.fill_between(xs, [y - s for y, s in zip(ys, std)], [y + s for y, s in zip(ys, std)],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
    _mark_resolutions(ax, spans)
    # From the start of the run on every panel (the bands span the whole run), so panels line up.
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.set_xlabel("kimg")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def _level_order(key: str) -> tuple[int, int]:
    # swd_mean first, then the pyramid levels from the finest.
    level = key.removeprefix("swd_")
    return (0, 0) if not level.isdigit() else (1, -int(level))


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the panels the run's metrics.jsonl has data for; returns their paths."""
    metrics = RunDir(Path(run_dir)).metrics
    if not metrics.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = read_metrics(metrics)
    if not records:
        raise ValueError(f"{metrics} has no complete records yet")
    out = Path(out) if out is not None else Path(run_dir) / "plots"
    present = sorted({k for r in records for k, v in r.items() if _number(v) is not None and math.isfinite(v)})
    spans = resolution_spans(records)
    written = []
    for name, title, ylabel, wanted in PANELS:
        keys = sorted((k for k in present if wanted(k)), key=_level_order)
        if not keys:
            continue
        out.mkdir(parents=True, exist_ok=True)
        plot_panel(records, spans, out / name, title, ylabel, keys)
        written.append(out / name)
    return written
