"""The GPU check's own logic, on the CPU: the batch search, the OOM probe, the device timeline's
arithmetic, the scaler's skip count, and the budget bookkeeping (the script itself runs end to end
in tests/test_benchmarks.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from benchmarks.gpu_check import read_rows
from benchmarks.gpu_sections import Rows, fits_in_memory, largest_fitting, scaler_skips, timeline_shares


def _search(limit: int, start: int, cap: int) -> tuple[tuple[int, int | None], list[int]]:
    tried = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= limit

    return largest_fitting(fits, start, cap), tried


def test_batch_search_doubles_then_bisects_to_within_an_eighth():
    (largest, failing), tried = _search(limit=50, start=4, cap=128)
    assert tried[:5] == [4, 8, 16, 32, 64]
    assert largest <= 50 < failing and failing - largest <= max(1, largest // 8)


def test_batch_search_stops_at_its_cap_and_reports_a_start_that_does_not_fit():
    assert _search(limit=10**6, start=64, cap=512) == ((512, None), [64, 128, 256, 512])
    (largest, failing), tried = _search(limit=2, start=4, cap=32)
    assert (largest, failing) == (2, 3) and tried[0] == 4
    assert _search(limit=0, start=1, cap=8)[0] == (0, 1)


def test_an_out_of_memory_step_is_a_no_and_the_next_probe_runs():
    def too_big() -> None:
        torch.ones(1000)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def no_workspace() -> None:
        raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert fits_in_memory(too_big, torch.device("cpu")) == (False, None)
    assert fits_in_memory(no_workspace, torch.device("cpu")) == (False, None)
    assert fits_in_memory(lambda: None, torch.device("cpu")) == (True, None)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # only running out means "does not fit"
        fits_in_memory(broken, torch.device("cpu"))


def _event(name: str, start: float, end: float, device=DeviceType.CUDA, annotation: bool = False):
    return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                           time_range=SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start))


def test_gpu_idle_share_is_the_gap_between_kernels_counted_once():
    events = [
        _event("gemm", 0, 40), _event("relu", 30, 50),  # overlapping streams: busy 0-50
        _event("Optimizer.step", 0, 100, annotation=True),  # a range, not work: ignored
        _event("Memcpy DtoH", 75, 100),  # busy 75-100, idle 50-75
        _event("cudaLaunchKernel", 0, 1, DeviceType.CPU),
        _event("cudaStreamSynchronize", 55, 75, DeviceType.CPU),  # the host waiting in the step
        _event("cudaDeviceSynchronize", 100, 101, DeviceType.CPU),  # the profile's closing sync
    ]
    shares = timeline_shares(events, steps=1, wall_s=200e-6)
    assert shares["gpu_idle_share"] == pytest.approx(0.25)
    assert shares["host_syncs_per_step"] == 1 and shares["host_wait_share"] == pytest.approx(0.1)
    assert shares["kernels_per_step"] == 3


def test_no_device_timeline_on_the_cpu():
    shares = timeline_shares([_event("aten::conv2d", 0, 5, DeviceType.CPU)], steps=2, wall_s=1.0)
    assert shares["gpu_idle_share"] is None and "n/a" in shares["note"]


def test_scaler_skips_come_from_the_final_scale():
    state = {"scale": 2.0**12, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    assert scaler_skips(state, steps=300) == 4
    assert scaler_skips(state, steps=5000) is None  # the scale may have grown since: unknown
    assert scaler_skips({}, steps=300) is None  # no scaler (fp32, bf16)


def test_a_section_stopped_mid_measurement_keeps_its_rows_and_names_the_one_cut_short(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "info", "device": {"type": "cuda"}},
        {"kind": "start", "label": "stylegan 1024 bf16"},
        {"kind": "row", "label": "stylegan 1024 bf16", "images_per_s": 12.5},
        {"kind": "start", "label": "progan 1024 bf16"},
    ]) + "\n")
    info, found = read_rows(rows, "stopped: budget")
    assert info == {"device": {"type": "cuda"}}
    assert found == [{"label": "stylegan 1024 bf16", "images_per_s": 12.5},
                     {"label": "progan 1024 bf16", "stopped": "stopped: budget"}]
    assert read_rows(tmp_path / "never-written.jsonl", "stopped: budget") == ({}, [])


def test_a_measurement_due_after_the_deadline_is_skipped_and_a_failing_one_recorded(tmp_path):
    path = tmp_path / "rows.jsonl"
    Rows(path, deadline=0).measure("late", lambda: {"images_per_s": 1.0})
    on_time = Rows(path, deadline=float("inf"))
    on_time.measure("oom", lambda: torch.zeros(1).new_empty(-1))
    on_time.measure("fine", lambda: [{"model": "a"}, {"model": "b"}])
    _, found = read_rows(path, None)
    assert [r["label"] for r in found] == ["late", "oom", "fine", "fine"]
    assert found[0]["skipped"] == "budget" and "images_per_s" not in found[0]
    assert found[1]["error"].startswith("RuntimeError: ") and found[1]["seconds"] >= 0
    assert [r["model"] for r in found[2:]] == ["a", "b"]
