"""What a run says: the header, the schedule-following ETA, the end summary with the final SWD,
and the reals grids (issue 14, items 2 and 3)."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch
from PIL import Image
from train_helpers import checkpoints, metrics, train

from gan_hr.config import Config, LossConfig, ModelConfig, ScheduleConfig
from gan_hr.evaluation import Evaluator
from gan_hr.inference import load_generator
from gan_hr.schedule import Schedule
from gan_hr.training import report
from gan_hr.training.eta import Eta, end_images, probe_speeds
from gan_hr.training.launch import FINAL_SWD_DIRS, FINAL_SWD_REPEATS

# 4² for 1 kimg at batch 10, 8² fades in and trains for 2 kimg at batch 10, then 16² at batch 5.
SCHEDULE = Schedule(ScheduleConfig(start_res=4, max_res=16, fade_kimg=1, stable_kimg=1, batch_size=10,
                                   batch_by_res={16: 5}))
PROBE = {4: 100.0, 8: 50.0, 16: 10.0}


# --------------------------------------------------------------------------- where a run ends


def test_end_images_walks_the_steps_phase_by_phase():
    assert end_images(SCHEDULE, step=0, images_seen=0, max_steps=None, total_images=5000) == 5000
    # 100 steps of 10 at 4², 200 of 10 at 8², then 50 of 5 at 16².
    assert end_images(SCHEDULE, step=0, images_seen=0, max_steps=350, total_images=5000) == 3250
    # From a resumed position, and whichever limit comes first.
    assert end_images(SCHEDULE, step=300, images_seen=3000, max_steps=350, total_images=3100) == 3100
    assert end_images(SCHEDULE, step=350, images_seen=3250, max_steps=350, total_images=5000) == 3250
    # A batch that does not divide a phase: its last step ends past the boundary, as in training.
    odd = Schedule(ScheduleConfig(start_res=4, max_res=8, fade_kimg=1, stable_kimg=1, batch_size=16))
    assert end_images(odd, step=0, images_seen=0, max_steps=63, total_images=10**6) == 1008
    assert end_images(odd, step=0, images_seen=0, max_steps=64, total_images=10**6) == 1024
    assert end_images(odd, step=0, images_seen=0, max_steps=None, total_images=1001) == 1008


# --------------------------------------------------------------------------- ETA


def test_eta_before_any_step_is_the_probe_phase_by_phase():
    eta = Eta(SCHEDULE, PROBE)
    assert eta.remaining(0, 5000) == pytest.approx(1000 / 100 + 2000 / 50 + 2000 / 10)
    assert eta.remaining(2500, 3500) == pytest.approx(500 / 50 + 500 / 10)
    assert eta.remaining(5000, 5000) == 0


def test_eta_follows_measured_speeds_and_adds_their_overhead_to_the_probe_for_the_rest():
    eta = Eta(SCHEDULE, PROBE)
    eta.measure(4, 100, 2.0)  # 50 img/s: a step of 10 took 0.2 s where the probe's took 0.1 s
    assert eta.speed(4) == 50.0
    assert eta.speed(8) == pytest.approx(10 / (10 / 50 + 0.1))  # the same 0.1 s more per step
    assert eta.speed(16) == pytest.approx(5 / (5 / 10 + 0.1))  # per step, at its own batch of 5
    assert eta.remaining(500, 5000) == pytest.approx(500 / 50 + 2000 / (100 / 3) + 2000 / (5 / 0.6))
    eta.measure(8, 300, 10.0)  # the newest measurement sets what is added where nothing is measured yet
    assert eta.speed(4) == 50.0 and eta.speed(8) == 30.0
    assert eta.speed(16) == pytest.approx(5 / (5 / 10 + 10 / 30 - 10 / 50))
    assert eta.remaining(2000, 5000) == pytest.approx(1000 / 30 + 2000 / eta.speed(16))
    eta.measure(8, 300, float("nan"))  # a window with no time is ignored
    assert eta.speed(8) == 30.0
    # A probe far slower than the run (taken on a busy machine): its relative costs are kept.
    busy = Eta(SCHEDULE, PROBE)
    busy.measure(16, 1000, 10.0)  # 100 img/s, ten times the probe's 16²
    assert busy.speed(8) == pytest.approx(500.0)


def test_eta_weighs_recent_windows_more():
    eta = Eta(SCHEDULE, PROBE)
    eta.measure(16, 100, 10.0)  # 10 img/s
    eta.measure(16, 100, 2.0)  # 50 img/s: the earlier window counts half
    assert eta.speed(16) == pytest.approx((0.5 * 100 + 100) / (0.5 * 10 + 2))
    for _ in range(20):  # a lasting change takes over
        eta.measure(16, 100, 4.0)
    assert eta.speed(16) == pytest.approx(25.0, rel=1e-4)


def test_eta_after_a_resume_counts_only_what_is_left():
    # A run resumed at 3500 images (16²): nothing measured in this process yet, only the probe.
    eta = Eta(SCHEDULE, PROBE)
    assert eta.remaining(3500, 5000) == pytest.approx(1500 / 10)
    eta.measure(16, 100, 4.0)
    assert eta.remaining(4000, 5000) == pytest.approx(1000 / 25)


def test_eta_without_a_probe_knows_only_what_it_measured():
    eta = Eta(SCHEDULE)
    assert eta.remaining(0, 5000) is None
    eta.measure(4, 100, 1.0)
    assert eta.remaining(0, 1000) == pytest.approx(10.0)
    assert eta.remaining(0, 5000) is None


def test_probe_times_every_resolution_and_leaves_the_rng_alone():
    cfg = Config(model=ModelConfig(name="stylegan", latent_dim=8, w_dim=8, mapping_layers=1, channel_base=64,
                                   channel_max=8),
                 schedule=ScheduleConfig(start_res=4, max_res=8, batch_size=4))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    speeds = probe_speeds(cfg, Schedule(cfg.schedule), [4, 8], device=torch.device("cpu"), world_size=2,
                          autocast=contextlib.nullcontext, repeats=1)
    assert set(speeds) == {4, 8} and all(s > 0 for s in speeds.values())
    assert torch.equal(torch.get_rng_state(), state)


def test_probe_weighs_lazy_r1_steps_as_training_mixes_them(monkeypatch):
    """loss.r1_every 4: one step in four pays for R1, so the probe's step time is (R1 + 3 plain) / 4.
    A fake step advances a fake clock: 4 s with the penalty, 1 s without."""
    from gan_hr.training import eta as eta_module

    clock = [0.0]
    asked = []

    def fake_step(cfg, G, D, real, res, autocast, *, regularize):
        asked.append(regularize)
        clock[0] += 4.0 if regularize else 1.0

    monkeypatch.setattr(eta_module, "_probe_step", fake_step)
    monkeypatch.setattr(eta_module.time, "perf_counter", lambda: clock[0])
    tiny = ModelConfig(name="progan", latent_dim=8, channel_base=64, channel_max=8)
    for every, seconds in ((4, (4 + 3 * 1) / 4), (1, 4.0)):
        cfg = Config(model=tiny, loss=LossConfig(name="logistic", r1_every=every),
                     schedule=ScheduleConfig(start_res=4, max_res=4, batch_size=8))
        asked.clear()
        speeds = probe_speeds(cfg, Schedule(cfg.schedule), [4], device=torch.device("cpu"), world_size=1,
                              autocast=contextlib.nullcontext, repeats=1)
        assert speeds == {4: pytest.approx(8 / seconds)}
        assert asked == ([True, True, False, False] if every == 4 else [True, True])


def test_probe_times_the_optimizer_and_ema_updates_of_a_step(monkeypatch):
    """A step's Adam and EMA updates are part of its time: a fake clock where the step takes 1 s
    and the EMA update 2 s gives 3 s a step; and both optimizers stepped."""
    from gan_hr.training import eta as eta_module

    clock = [0.0]
    stepped = []

    def fake_step(cfg, G, D, real, res, autocast, *, regularize):
        for p in [*G.parameters(), *D.parameters()]:
            p.grad = torch.ones_like(p)
        clock[0] += 1.0

    real_adam = eta_module.build_adam

    def counting_adam(cfg, net):
        opt = real_adam(cfg, net)
        step = opt.step
        opt.step = lambda: (stepped.append(net), step())
        return opt

    def slow_ema(ema, model, beta):
        clock[0] += 2.0

    monkeypatch.setattr(eta_module, "_probe_step", fake_step)
    monkeypatch.setattr(eta_module, "build_adam", counting_adam)
    monkeypatch.setattr(eta_module, "update_ema", slow_ema)
    monkeypatch.setattr(eta_module.time, "perf_counter", lambda: clock[0])
    cfg = Config(model=ModelConfig(name="progan", latent_dim=8, channel_base=64, channel_max=8),
                 schedule=ScheduleConfig(start_res=4, max_res=4, batch_size=6))
    speeds = probe_speeds(cfg, Schedule(cfg.schedule), [4], device=torch.device("cpu"), world_size=1,
                          autocast=contextlib.nullcontext, repeats=1)
    assert speeds == {4: pytest.approx(6 / 3.0)}
    assert len(stepped) == 4  # G and D, on the warm-up and the timed step


# --------------------------------------------------------------------------- text


def test_text_helpers():
    assert [report.duration(s) for s in (None, 3.21, 42, 250, 7500, 3 * 86400)] == [
        "?", "3.2 s", "42 s", "4 min 10 s", "2 h 05 min", "3.0 days"]
    assert report.workers_text({4: 1, 8: 1, 32: 1}) == "1"
    assert report.workers_text({64: 2, 128: 2, 256: 4, 1024: 16}) == "2 (64²-128²), 4 (256²), 16 (1024²)"
    assert report.swd_text({"swd_mean": 41.23, "swd_floor_mean": 19.8}, 32, 512, 3.14) == (
        "41.2 ×10³ at 32² (floor 19.8: 2.1× the floor; 512 images, 3.1 s)")
    demo = Schedule(ScheduleConfig(start_res=4, max_res=32, fade_kimg=2, stable_kimg=2))
    assert report.schedule_text(demo, start_images=0, end_images=16000, stop="train.total_kimg") == (
        "4² → 32², fade 2 + stable 2 kimg per resolution; 16.0 kimg (train.total_kimg), ends at 32²")
    assert report.schedule_text(demo, start_images=9000, end_images=10000, stop="train.max_steps 625") == (
        "4² → 32², fade 2 + stable 2 kimg per resolution; from 9.0 kimg (16²) to 10.0 kimg (train.max_steps 625), "
        "ends at 16²")


# --------------------------------------------------------------------------- a real run


def _lines(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{label:<{report.LABEL}}")]


@pytest.mark.slow
def test_a_run_reports_its_start_its_end_and_shows_the_reals(tmp_path, synthetic_data):
    """Header, bar and summary of a tiny run that ends at 16² (SWD on 256 images), then a resume
    that continues it and one of the finished run."""
    run = tmp_path / "run"
    on = ["train.final_swd=true", "train.sample_grid=4"]
    out = train(run, synthetic_data, *on, "train.max_steps=28").stdout
    # The header: where, on what, which data, what schedule, how long.
    assert _lines(out, "run") == [f"{'run':<11}{run}, a new run"]
    assert _lines(out, "device")[0].endswith("cpu, fp32, 1 process, loader workers per process 0")
    assert _lines(out, "data") == [f"{'data':<11}{synthetic_data}: 256 images, 4² to 32²"]
    assert "4² → 16², fade 0.064 + stable 0.064 kimg per resolution; 0.2 kimg (train.max_steps 28), ends at 16²" in out
    assert re.search(r"estimate +\S.* \(timed: 4² [\d.]+k?, 8² [\d.]+k?, 16² [\d.]+k? img/s", out)
    # The summary: checkpoint, SWD against the floor, samples, plots, the next command.
    ckpt = checkpoints(run)[-1]
    assert _lines(out, "checkpoint") == [f"{'checkpoint':<11}{ckpt}"]
    swd = re.search(r"swd +([\d.]+) ×10³ at 16² \(floor ([\d.]+): ([\d.]+)× the floor; 256 images, [\d.]+ s\)", out)
    assert swd, out[-2000:]
    assert f"plots      {run / 'plots'}" in out
    assert f"python pipelines/generate.py --checkpoint {ckpt} --out grid.png" in out
    # One row in metrics.jsonl, in evaluate.py's keys.
    final = metrics(run)[-1]
    assert final["metric_source"] == "final" and final["step"] == 28 and final["num_images"] == 256
    assert f"{final['swd_mean']:.1f}" == swd[1] and f"{final['swd_floor_mean']:.1f}" == swd[2]
    assert {"swd_16", "swd_floor_16"} <= final.keys()
    assert [r["step"] for r in metrics(run)] == [*range(1, 29), 28]
    # The final checkpoint's EMA generator, as evaluate.py reads it, with the same images and projections.
    trained = load_generator(ckpt)
    again = Evaluator(str(synthetic_data), ["swd"], num_images=256, swd_floor=True, swd_dirs=FINAL_SWD_DIRS,
                      swd_repeats=FINAL_SWD_REPEATS)(trained.generator, trained.resolution, trained.alpha)
    # Equal but for the last float bits: this process may sum with another thread count.
    assert (again["swd_mean"], again["swd_floor_mean"]) == pytest.approx((final["swd_mean"], final["swd_floor_mean"]),
                                                                          rel=1e-5)
    # The reals: once per resolution trained, tiles of the 4 first images enlarged to 32 px.
    reals = {res: run / "samples" / f"reals-{res}.png" for res in (4, 8, 16)}
    assert all(p.is_file() for p in reals.values()) and not (run / "samples" / "reals-32.png").exists()
    assert Image.open(reals[4]).size == (2 * 34 + 2, 2 * 34 + 2)
    written = {res: p.stat().st_mtime_ns for res, p in reals.items()}

    # Resumed: said in the header, estimated from there, the reals left as they were.
    out = train(run, synthetic_data, *on, "train.max_steps=30", resume="auto").stdout
    assert _lines(out, "run") == [f"{'run':<11}{run}, resuming from {ckpt} (step 28, 0.2 kimg)"]
    assert "from 0.2 kimg (16²) to 0.2 kimg (train.max_steps 30)" in out
    assert {res: p.stat().st_mtime_ns for res, p in reals.items()} == written
    assert [r["step"] for r in metrics(run) if r.get("metric_source") == "final"] == [28, 30]

    # Finished already: nothing trained, no new checkpoint, the recorded SWD shown again.
    before = checkpoints(run)
    out = train(run, synthetic_data, *on, "train.max_steps=30", resume="auto").stdout
    assert "already finished (max_steps) at step 30, 0.2 kimg: nothing to train" in out
    assert checkpoints(run) == before and len(metrics(run)) == 32
    assert re.search(r"swd +[\d.]+ ×10³ at 16² \(floor [\d.]+: [\d.]+× the floor; recorded\)", out)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 30
