"""W&B through Accelerate's tracker, made safe for week-long jobs on clusters.

Tracking never stops or stalls training: when W&B cannot start online (no API key, a server it
cannot reach within `tracking.init_timeout_s`), the run logs offline into the run directory, with
one warning line saying how to upload it later (`wandb sync`). The run id comes from run.json, so
every restart continues the same W&B run; a warm-started run records its parent in the config.
The run is finished with the process's exit code, so a diverged run shows as failed.

W&B's keys are grouped into sections (`wandb_keys`: loss/, reg/, perf/, progress/, guard/,
metrics/, samples/, plots/) and plotted against `progress/kimg`; metrics.jsonl keeps its flat keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator

from gan_hr.config import Config
from gan_hr.training.resume import warn
from gan_hr.training.run_dir import RunDir


# metrics.jsonl key -> W&B section; a prefix ending in "_" groups every key that starts with it.
_SECTIONS = {
    "loss": ("loss_d", "loss_g", "score_", "loss_vae", "recon", "kl"),
    "reg": ("gp", "r1", "drift"),
    "perf": ("images_per_s", "sec_per_kimg", "data_wait_frac", "peak_mem_mb"),
    "progress": ("kimg", "resolution", "alpha", "phase", "batch_size", "lr"),
    "guard": ("nan_skipped", "corrupt_skipped"),
    "metrics": ("swd_", "fid", "kid", "kid_", "metric_error"),
}
# The step is W&B's own; the source ("training", or "final" for the end of run SWD) and the
# image count describe a metric row rather than being one.
_NOT_LOGGED = ("step", "metric_source", "num_images")


def _section(key: str) -> str:
    for section, keys in _SECTIONS.items():
        if any(key == k or (k.endswith("_") and key.startswith(k)) for k in keys):
            return section
    return "other"


def wandb_keys(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record as W&B logs it: `kimg` -> `progress/kimg`, `loss_d` -> `loss/loss_d`, ..."""
    return {f"{_section(k)}/{k}": v for k, v in record.items() if k not in _NOT_LOGGED}


class Tracking:
    """The W&B run of this process (main process only; a no-op elsewhere or without W&B)."""

    def __init__(self, acc: Accelerator) -> None:
        self.acc = acc

    def log_plots(self, paths: list[Path]) -> None:
        """Log the run's plots (plots/*.png) as `plots/<name>` images."""
        for tracker in [t for t in self.acc.trackers if t.name == "wandb"]:
            tracker.log_images({f"plots/{p.stem}": [str(p)] for p in paths})

    def finish(self, exit_code: int) -> None:
        """Close the W&B run with the run's exit code (Accelerate's own finish passes none)."""
        for tracker in [t for t in self.acc.trackers if t.name == "wandb"]:
            run = getattr(tracker, "run", None)
            if run is not None:
                run.finish(exit_code=exit_code)
            self.acc.trackers.remove(tracker)


def start_tracking(acc: Accelerator, cfg: Config, run: RunDir, record: dict[str, Any]) -> Tracking:
    """Start the W&B run recorded in run.json, falling back to offline logging if it must."""
    if cfg.tracking.backend != "wandb":
        return Tracking(acc)
    import wandb

    config = {**cfg.to_dict(), "parent": record.get("parent")}
    settings = {"init_timeout": cfg.tracking.init_timeout_s}
    kwargs = {"id": record["wandb_run_id"], "resume": "allow", "dir": str(run.root),
              "name": cfg.tracking.run_name or run.root.name, "entity": cfg.tracking.entity}
    try:
        acc.init_trackers(cfg.tracking.project, config=config,
                          init_kwargs={"wandb": {**kwargs, "settings": wandb.Settings(**settings)}})
    except Exception as exc:  # wandb raises UsageError, CommError, timeouts, ...: none may end the run
        acc.trackers.clear()
        wandb.teardown()  # the failed attempt's service still holds the run id
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warn(f"W&B could not start online ({type(exc).__name__}: {reason}); logging offline to "
             f"{run.root / 'wandb'}: upload it later with `wandb sync {run.root / 'wandb'}/offline-run-*`")
        acc.init_trackers(cfg.tracking.project, config=config,
                          init_kwargs={"wandb": {**kwargs, "mode": "offline", "settings": wandb.Settings(**settings)}})
    # Charts over images seen, which is what the schedule and resume count in (steps vary with batch).
    if acc.is_main_process:  # the W&B run exists there alone
        wandb_run = acc.get_tracker("wandb", unwrap=True)
        wandb_run.define_metric("progress/kimg")
        wandb_run.define_metric("*", step_metric="progress/kimg")
    return Tracking(acc)
