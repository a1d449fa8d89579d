"""Throughput of the full training step (D step with penalty, G step, EMA) per model, resolution,
phase and precision, with FLOPs counted and compared with this machine's measured ceiling.

    python benchmarks/train_step.py --model progan|stylegan --res R --batch B --precision fp32|bf16|fp16
        [--phase fade|stable] [--channel-max C] [--steps N] [--compile [on|off ...]] [--json FILE]

--model, --res, --precision, --phase and --compile take several values; every combination is
measured (`--compile` alone means on; `--compile off on` measures both).
It prints a table and writes JSON (default benchmarks/out/train_step.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from accelerate.utils import InitProcessGroupKwargs  # noqa: E402

from gan_hr.config import Config, from_dict, validate  # noqa: E402
from gan_hr.schedule import Phase  # noqa: E402
from gan_hr.training.compile import eager  # noqa: E402
from gan_hr.training.run_dir import RunDir  # noqa: E402
from gan_hr.training.trainer import Trainer  # noqa: E402

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class FlopCount(TorchDispatchMode):
    """Sums torch.utils.flop_counter's per-op formulas over everything dispatched, backward and
    double backward included. (FlopCounterMode itself tracks modules with hooks that fail
    inside the gradient penalty's autograd.grad.)"""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, min_seconds: float = 1.0) -> float:
    """Seconds per call, after one warm-up call, over at least `min_seconds` (at least one call:
    without bf16 hardware a bf16 matmul can take a minute). Calls run in rounds of doubling length
    with one device sync per round, so that a GPU's launch and sync latency stay out of the time."""
    fn()
    synchronize(device)
    calls, round_calls, start = 0, 1, time.perf_counter()
    while True:
        for _ in range(round_calls):
            fn()
        calls += round_calls
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls
        round_calls *= 2


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# Sizes of the ceiling's matmul (n x n) and conv (batch) per device type: a GPU needs far larger
# ones than the CPU to reach its peak (an H200 runs a 2048² bf16 matmul in microseconds).
CEILING_SIZES = {"cpu": (2048, 16), "cuda": (8192, 256)}


def measure_ceiling(device: torch.device, precisions: list[str], min_seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of an n x n matmul and of a 3×3 conv (512 channels, 16², fwd+bwd), for fp32 and the
    precisions benchmarked (sizes: CEILING_SIZES)."""
    n, batch = CEILING_SIZES.get(device.type, CEILING_SIZES["cpu"])
    ceiling = {}
    for name in dict.fromkeys(["fp32", *precisions]):
        if name == "fp16" and device.type != "cuda":
            continue
        dtype = DTYPES[name]
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ceiling[f"matmul_{name}"] = 2 * n**3 / _timed(lambda: a @ b, device, min_seconds)
        x = torch.randn(batch, 512, 16, 16, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(512, 512, 3, 3, device=device, dtype=dtype, requires_grad=True)

        def conv():
            torch.nn.functional.conv2d(x, w, padding=1).sum().backward()

        ceiling[f"conv_{name}"] = 3 * 2 * batch * 512 * 512 * 9 * 16 * 16 / _timed(conv, device, min_seconds)
    return ceiling


def step_config(model: str, res: int, batch: int, precision: str, phase: str, channel_max: int, loss: str,
                compile: bool = False) -> Config:
    """The config this script benchmarks: paper widths up to `channel_max`, a schedule whose last
    resolution is `res` (fading in from res/2 for `phase` fade), one batch size."""
    start = res // 2 if phase == "fade" and res > 4 else res
    cfg = from_dict({
        "model": {"name": model, "channel_max": channel_max},
        "loss": {"name": loss},
        "schedule": {"start_res": start, "max_res": res, "batch_size": batch, "fade_kimg": 600, "stable_kimg": 600},
        "train": {"mixed_precision": PRECISION[precision], "compile": compile},
        "data": {"num_workers": 0},
    })
    validate(cfg)
    return cfg


def make_trainer(cfg: Config, run_dir: Path, *, backend: str | None = None, lagged_flags: bool = True) -> Trainer:
    """A Trainer with no data (steps are fed by hand). `backend` names the process group's
    backend when the launch has several processes (Accelerate's default: nccl on CUDA)."""
    # Accelerate keeps one process-wide state; each row may use another precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    handlers = [InitProcessGroupKwargs(backend=backend)] if backend else None
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=handlers)
    return Trainer(cfg, RunDir(run_dir), accelerator, data_root="", lagged_flags=lagged_flags)


def position(trainer: Trainer, res: int, phase: str) -> Phase:
    """Put the trainer halfway through the fade of `res` (phase "fade") or at alpha 1 ("stable")."""
    target = next(p for p in trainer.schedule.phases if p.resolution == res)
    into_phase = target.fade_images // 2 if phase == "fade" else target.fade_images
    trainer.state.images_seen = target.start_images + into_phase
    trainer.state.phase_index = target.index
    return target


def build_trainer(model: str, res: int, batch: int, precision: str, phase: str, channel_max: int,
                  loss: str, run_dir: Path, compile: bool = False) -> tuple[Trainer, Phase]:
    trainer = make_trainer(step_config(model, res, batch, precision, phase, channel_max, loss, compile), run_dir)
    return trainer, position(trainer, res, phase)


def real_batch(batch: int, res: int, device: torch.device) -> torch.Tensor:
    """Random uint8 reals, pinned on CUDA as the trainer's loader pins them: copying pageable
    memory to the GPU waits for the device, a host sync per step the real run does not have."""
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    return images.pin_memory() if device.type == "cuda" else images


def fixed_step(trainer: Trainer, target: Phase, images: torch.Tensor) -> Callable[[], None]:
    """One training step on `images` that holds the fade position fixed, so that every call
    does the same work."""
    start_images = trainer.state.images_seen

    def step() -> None:
        trainer.state.images_seen = start_images
        trainer.train_step(target, images)

    return step


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated on CUDA (since the last reset); on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[], None], device: torch.device, steps: int, compiled: bool) -> dict[str, float]:
    """Warm-up (for a compiled model, until 3 steps in a row compile nothing: style mixing on and
    off are separate graphs), FLOPs of one step, then seconds per step over `steps` steps."""
    warmup_start = time.perf_counter()
    step()
    if compiled:
        quiet, graphs = 0, None
        while quiet < 3:
            step()
            quiet = quiet + 1 if counters["stats"]["unique_graphs"] == graphs else 0
            graphs = counters["stats"]["unique_graphs"]
    warmup = time.perf_counter() - warmup_start
    # The same arithmetic either way; counted uncompiled (a dispatch mode would retrace graphs).
    with eager(), FlopCount() as counter:
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return {"warmup_s": warmup, "step_s": (time.perf_counter() - start) / steps, "flops_per_step": counter.total,
            "peak_mem_mb": peak_memory_mb(device)}


def throughput(timing: dict[str, float], batch: int, ceiling: dict[str, float] | None, precision: str) -> dict:
    """A timing as images/s, s/kimg, FLOPs per image and achieved FLOP/s (of the precision's
    ceiling, the faster of matmul and conv, when one is given)."""
    seconds = timing["step_s"]
    achieved = timing["flops_per_step"] / seconds
    row = {"warmup_s": timing["warmup_s"], "images_per_s": batch / seconds, "sec_per_kimg": seconds * 1000 / batch,
           "peak_mem_mb": timing["peak_mem_mb"], "flops_per_image": timing["flops_per_step"] / batch,
           "achieved_tflops": achieved / 1e12}
    if ceiling:
        row["achieved_flops_fraction"] = achieved / max(ceiling[f"conv_{precision}"], ceiling[f"matmul_{precision}"])
    return row


def bench_one(args, model: str, res: int, precision: str, phase: str, compiled: bool,
              ceiling: dict[str, float]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, target = build_trainer(model, res, args.batch, precision, phase, args.channel_max, args.loss,
                                        Path(tmp), compile=compiled)
        alpha = target.alpha(trainer.state.images_seen)
        step = fixed_step(trainer, target, real_batch(args.batch, res, trainer.device))
        timing = time_steps(step, trainer.device, args.steps, compiled)
    return {
        "model": model, "res": res, "batch": args.batch, "precision": precision, "phase": phase,
        "alpha": round(alpha, 3), "channel_max": args.channel_max, "loss": args.loss, "steps": args.steps,
        "compile": compiled, **throughput(timing, args.batch, ceiling, precision),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["progan"], choices=["progan", "stylegan", "dcgan"])
    p.add_argument("--res", nargs="+", type=int, default=[32])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISION))
    p.add_argument("--phase", nargs="+", default=["fade"], choices=["fade", "stable"])
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--loss", default="wgan_gp", choices=["wgan_gp", "logistic", "lsgan"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", nargs="*", choices=["on", "off"], default=["off"],
                   help="torch.compile the model blocks (train.compile); alone: on")
    p.add_argument("--json", default="benchmarks/out/train_step.json")
    args = p.parse_args(argv)

    device = Accelerator().device
    ceiling = measure_ceiling(device, args.precision)
    rows = []
    compile_modes = [mode == "on" for mode in dict.fromkeys(args.compile or ["on"])]
    combos = itertools.product(args.model, args.res, args.precision, args.phase, compile_modes)
    for model, res, precision, phase, compiled in combos:
        if model == "dcgan" and phase == "fade":
            phase = "stable"
        rows.append(bench_one(args, model, res, precision, phase, compiled, ceiling))
        r = rows[-1]
        print(f"{r['model']:>8} {r['res']:>5} {r['precision']:>5} {r['phase']:>6} "
              f"{'compiled' if compiled else 'eager':>8}  "
              f"{r['images_per_s']:8.2f} img/s {r['sec_per_kimg']:9.1f} s/kimg {r['peak_mem_mb']:8.0f} MB "
              f"{r['flops_per_image'] / 1e9:8.2f} GFLOP/img {100 * r['achieved_flops_fraction']:5.1f}% of ceiling",
              flush=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ceiling_tflops": {k: v / 1e12 for k, v in ceiling.items()},
        "results": rows,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("ceiling TFLOP/s: " + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in ceiling.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
