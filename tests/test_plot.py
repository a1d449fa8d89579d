"""Plots of a run's metrics.jsonl (gan_hr.plots, pipelines/plot.py), with and without metric records."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "pipelines"))
import plot  # noqa: E402

from gan_hr.plots import resolution_spans  # noqa: E402

TRAINING_PANELS = ["losses.png", "regularization.png", "throughput.png"]


def training_records(regularizer: str = "gp") -> list[dict]:
    """Records shaped like the trainer's: 4² for 1 kimg, 8² to 3 kimg, then 16²."""
    records = []
    for step in range(1, 41):
        kimg = step * 0.1
        res = 4 if kimg <= 1.0 + 1e-9 else 8 if kimg <= 3.0 + 1e-9 else 16
        records.append({
            "step": step, "kimg": round(kimg, 4), "resolution": res, "alpha": 1.0, "phase": {4: 0, 8: 1, 16: 2}[res],
            "batch_size": 16, "lr": 0.002, "loss_d": -1.0 / step, "loss_g": math.sin(step), regularizer: 0.1 * step,
            "drift": 0.01, "images_per_s": 500.0 - step, "sec_per_kimg": 2.0, "data_wait_frac": 0.1,
            "peak_mem_mb": 700.0, "nan_skipped": 0, "corrupt_skipped": 0,
        })
    records[5]["loss_d"] = float("nan")  # a skipped non-finite step
    del records[7]["images_per_s"]
    return records


def write_run(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    # A torn last line, as while the trainer is writing: ignored.
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4')
    return path


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # something was drawn


def test_training_log_only(tmp_path, capsys):
    run = write_run(tmp_path / "run", training_records())
    assert plot.main([str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / "plots" / name) for name in TRAINING_PANELS]
    for name in TRAINING_PANELS:
        assert_png(run / "plots" / name)
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(TRAINING_PANELS)


def test_with_metric_records(tmp_path, capsys):
    records = training_records("r1")
    # Metrics logged by the trainer at 16², and metric-only records appended by evaluate.py.
    records += [{"step": s, "kimg": s * 0.1, "resolution": 16, "swd_16": 100.0 / s, "swd_mean": 100.0 / s,
                 "fid": 300.0 / s, "kid": 0.3 / s, "kid_std": 0.01, "metric_source": "training"} for s in (32, 36, 40)]
    records += [{"step": 40, "kimg": 4.0, "resolution": 16, "alpha": 1.0, "swd_16": 20.0, "swd_mean": 20.0,
                 "fid": 7.0, "num_images": 64, "metric_source": "evaluate", "checkpoint": "x"}]
    run = write_run(tmp_path / "run", records)
    out = tmp_path / "figures"
    assert plot.main([str(run), "--out", str(out)]) == 0
    expected = TRAINING_PANELS + ["swd.png", "fid.png", "kid.png"]
    assert capsys.readouterr().out.split() == [str(out / name) for name in expected]
    for name in expected:
        assert_png(out / name)
    assert not (run / "plots").exists()


def test_metric_records_alone(tmp_path, capsys):
    run = write_run(tmp_path / "run", [{"step": 10, "kimg": 0.5, "resolution": 16, "swd_16": 50.0, "swd_mean": 50.0,
                                        "metric_source": "evaluate"}])
    assert plot.main([str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / "plots" / "swd.png")]
    assert_png(run / "plots" / "swd.png")


def test_resolution_spans():
    records = training_records()
    records.append({"step": 20, "kimg": 2.0, "resolution": 8, "fid": 1.0, "metric_source": "evaluate"})
    assert resolution_spans(records) == [(0.0, 1.0, 4), (1.0, 3.0, 8), (3.0, 4.0, 16)]


def test_missing_or_empty_log(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot.main([str(tmp_path)]) == 2


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "RUN_DIR: no such directory: {tmp}/missing"),
    (["{tmp}/file"], "RUN_DIR: {tmp}/file is a file, not a run directory"),
    (["{tmp}/empty"], "RUN_DIR: no metrics.jsonl in {tmp}/empty"),
    (["{tmp}/run", "--out", "{tmp}/file"], "--out: {tmp}/file is a file, not a directory"),
    (["{tmp}/run", "--out", "{tmp}/file/plots"],
     "--out: {tmp}/file/plots is inside {tmp}/file, which is a file, not a directory"),
])
def test_wrong_kind_of_path_is_one_line(args, message, tmp_path, capsys):
    write_run(tmp_path / "run", training_records())
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert plot.main([a.format(tmp=tmp_path) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [f"error: {message.format(tmp=tmp_path)}"]
    assert sorted(tmp_path.rglob("*")) == before


def test_drift_has_an_axis_of_its_own(tmp_path, monkeypatch):
    """Raw E[D(real)²] is ~1e3 times the penalty: on one axis the penalty is a flat line at zero."""
    from matplotlib.figure import Figure

    import gan_hr.plots as plots

    figures = []
    monkeypatch.setattr(plots, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    records = [{**r, "drift": 1000.0 * r["step"]} for r in training_records()]
    plots.plot_run(write_run(tmp_path / "run", records), tmp_path / "plots")
    (regularization,) = [f for f in figures if f.axes[0].get_title() == "Gradient penalty and drift"]
    left, right = regularization.axes
    assert [line.get_label() for line in left.get_lines() if not line.get_label().startswith("_")] == ["gp"]
    assert [line.get_label() for line in right.get_lines()] == ["drift (right axis)"]
    assert "loss.drift" in right.get_ylabel() and left.get_ylim()[1] < 10
    assert_png(tmp_path / "plots" / "regularization.png")
