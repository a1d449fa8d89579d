"""What a run says: the header before training and the summary at its end.

Pure functions of facts the launcher gathers (no torch, no files), so that tests can call them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gan_hr.schedule import Schedule

LABEL = 11  # width of the label column


def line(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}"


def duration(seconds: float | None) -> str:
    """'42 s', '4 min 10 s', '2 h 05 min', '3.2 days'; '?' for unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 9.5 else f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs} s"
    if seconds < 2 * 86400:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    return f"{seconds / 86400:.1f} days"


def kimg(images: float) -> str:
    return f"{images / 1000:.1f} kimg" if images < 100_000 else f"{images / 1000:.0f} kimg"


def rate(images_per_s: float) -> str:
    return f"{images_per_s / 1000:.1f}k" if images_per_s >= 1000 else f"{images_per_s:.0f}"


def workers_text(workers: Mapping[int, int]) -> str:
    """Loader workers per process by resolution, runs of equal counts joined: '1',
    '2 (4²-128²), 4 (256²), 8 (512²)'."""
    runs: list[tuple[int, int, int]] = []  # first res, last res, workers
    for res, n in sorted(workers.items()):
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], res, n)
        else:
            runs.append((res, res, n))
    if len(runs) == 1:
        return str(runs[0][2])
    return ", ".join(f"{n} ({lo}²)" if lo == hi else f"{n} ({lo}²-{hi}²)" for lo, hi, n in runs)


def schedule_text(schedule: Schedule, *, start_images: int, end_images: int, stop: str) -> str:
    """'4² → 32², fade 2 + stable 2 kimg per resolution; 16.0 kimg (train.total_kimg), ends at 32²',
    where `stop` says which limit ends the run."""
    first, last = schedule.phases[0].resolution, schedule.phases[-1].resolution
    cfg = schedule.cfg
    if first == last:
        text = f"{first}² (one resolution)"
    else:
        text = f"{first}² → {last}², fade {cfg.fade_kimg:g} + stable {cfg.stable_kimg:g} kimg per resolution"
    end_res = schedule.resolution(max(end_images - 1, 0))
    if start_images:
        start_res = schedule.resolution(start_images)
        span = f"from {kimg(start_images)} ({start_res}²) to {kimg(end_images)}"
    else:
        span = kimg(end_images)
    return f"{text}; {span} ({stop}), ends at {end_res}²"


def header_lines(
    *,
    run_dir: str,
    start: str,
    device: str,
    precision: str,
    requested_precision: str,
    processes: int,
    workers: Mapping[int, int],
    data_root: str,
    num_images: int | None,
    data_resolutions: Sequence[int],
    model: str,
    parameters: tuple[int, int],
    schedule: str,
    estimate_s: float | None,
    probe: Mapping[int, float],
) -> list[str]:
    """The run's header: where it writes, what it computes on, what it reads and trains, how long."""
    shown = {"no": "fp32"}.get(precision, precision)
    if requested_precision == "auto":
        shown += " (auto)"
    images = f"{num_images} images" if num_images is not None else "images: unknown"
    levels = f"{min(data_resolutions)}² to {max(data_resolutions)}²" if data_resolutions else "resolutions unknown"
    g, d = (f"{p / 1e6:.2f} M" for p in parameters)
    timed = ", ".join(f"{res}² {rate(speed)}" for res, speed in sorted(probe.items()))
    estimate = duration(estimate_s)
    if timed:
        estimate += f" (timed: {timed} img/s; the bar's eta follows the measured speed)"
    elif estimate_s is None:
        estimate = "nothing left to train"
    return [
        line("run", f"{run_dir}, {start}"),
        line("device", f"{device}, {shown}, {processes} process{'es' if processes > 1 else ''}, "
                       f"loader workers per process {workers_text(workers)}"),
        line("data", f"{data_root}: {images}, {levels}"),
        line("model", f"{model}: G {g}, D {d} parameters"),
        line("schedule", schedule),
        line("estimate", estimate),
    ]


def swd_text(values: Mapping[str, float], resolution: int, num_images: int, seconds: float | None) -> str:
    """'41.2 ×10³ at 32² (floor 19.8: 2.1× the floor; 512 images, 3.1 s)'."""
    swd, floor = values["swd_mean"], values.get("swd_floor_mean")
    text = f"{swd:.1f} ×10³ at {resolution}²"
    details = [] if seconds is None else [f"{num_images} images, {duration(seconds)}"]
    if floor:
        return f"{text} (floor {floor:.1f}: {swd / floor:.1f}× the floor; {'; '.join(details) or 'recorded'})"
    return f"{text} ({'; '.join(details)})" if details else text


def summary_lines(
    *,
    trained_s: float,
    estimate_s: float | None,
    checkpoint: str | None,
    swd: str | None,
    samples: str,
    plots: str | None,
    next_command: str,
) -> list[str]:
    """What the run left and what to do next."""
    time_text = duration(trained_s) + " of training"
    if estimate_s is not None:
        time_text += f" ({duration(estimate_s)} estimated at the start)"
    lines = [line("time", time_text), line("checkpoint", checkpoint or "none written")]
    if swd is not None:
        lines.append(line("swd", swd))
    lines.append(line("samples", f"{samples} (reals-<res>.png: the data at each resolution, beside the grids)"))
    if plots is not None:
        lines.append(line("plots", plots))
    lines.append(line("next", next_command))
    return lines
