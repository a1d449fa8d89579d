"""The GPU check's results (benchmarks/gpu_check.py) as Markdown: a header, one table per section,
and StyleGAN's 1024² step against the published 1-GPU figures."""

from __future__ import annotations

from collections.abc import Callable

Cell = Callable[[dict], str]

# Published 1-GPU training speed at 1024² (s/kimg), and the dense fp16/bf16 tensor-core peak of
# the GPU it was measured on (TFLOP/s, the vendor's figure).
REFERENCES = [
    ("StyleGAN2-ADA, config F, 1 V100", "154–162", 158.0, 125.0),
    ("StyleGAN3 paper, StyleGAN2 config, 1 A100", "157", 157.0, 312.0),
]


def num(key: str, fmt: str | None = None, scale: float = 1.0) -> Cell:
    """A row's value: yes/no, `fmt` for a number (default: integers as they are, else 2
    decimals), else as text; empty when the row lacks it."""
    def cell(row: dict) -> str:
        value = row.get(key)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "yes" if value else "**no**"
        if not isinstance(value, (int, float)):
            return str(value)
        if scale != 1.0:
            value *= scale
        return (fmt or ("{}" if isinstance(value, int) else "{:.2f}")).format(value)

    return cell


def note(row: dict) -> str:
    """Why a row has no numbers, or what to read them with."""
    if row.get("stopped"):
        return f"not finished: {row['stopped']}"
    for key in ("error", "skipped"):
        if row.get(key):
            return f"{key}: {row[key]}"
    return row.get("note", "")


def pair(first: str, second: str, fmt: str | None = None) -> Cell:
    return lambda row: " / ".join(num(k, fmt)(row) for k in (first, second)) if row.get(first) is not None else ""


TABLES: dict[str, tuple[str, list[tuple[str, Cell]]]] = {
    "train_step": ("Training step: mid-fade, one GPU's share of the shipped 1024² configs' batch", [
        ("model", num("model")), ("res", num("res")), ("precision", num("precision")), ("batch", num("batch")),
        ("alpha", num("alpha")), ("img/s", num("images_per_s")), ("s/kimg", num("sec_per_kimg", "{:.1f}")),
        ("peak MB", num("peak_mem_mb", "{:.0f}")), ("GFLOP/img", num("flops_per_image", "{:.4g}", 1e-9)),
        ("TFLOP/s", num("achieved_tflops", "{:.3g}")), ("of ceiling", num("achieved_flops_fraction", "{:.1%}"))]),
    "memory": ("Memory per resolution: the largest batch one GPU fits (mid-fade, one step)", [
        ("model", num("model")), ("res", num("res")), ("config global batch", num("global_batch")),
        ("per GPU (÷8)", num("per_gpu_batch")), ("largest that fits", num("largest_batch")),
        ("smallest OOM", num("first_failing_batch")), ("searched up to", num("searched_up_to")),
        ("peak MB at per-GPU batch", num("peak_mem_mb_at_per_gpu_batch", "{:.0f}")),
        ("per-GPU batch fits", num("per_gpu_fits")), ("global batch fits (1-GPU run)", num("one_gpu_fits"))]),
    "fp16_run": ("fp16 training run: pipelines/train_progressive.py, penalties on", [
        ("model", num("model")), ("precision", num("precision")), ("steps", num("steps")),
        ("stopped", num("stop_reason")), ("diverged", lambda r: "" if "diverged" not in r else
                                       ("**yes**" if r["diverged"] else "no")),
        ("res", num("res")), ("alpha", num("alpha")), ("unhealthy steps", num("unhealthy_steps")),
        ("overflow skips D / G", pair("overflow_skips_D", "overflow_skips_G")),
        ("loss scale D / G", pair("loss_scale_D", "loss_scale_G", "{:g}")), ("img/s", num("images_per_s"))]),
    "host_sync": ("Host syncs: the guard's flags read a step late (lagged) or at once", [
        ("model", num("model")), ("res", num("res")), ("precision", num("precision")), ("batch", num("batch")),
        ("flags", num("flags")), ("img/s", num("images_per_s")), ("GPU idle", num("gpu_idle_share", "{:.1%}")),
        ("host syncs/step", num("host_syncs_per_step", "{:.1f}")),
        ("host waiting", num("host_wait_share", "{:.1%}")), ("kernels/step", num("kernels_per_step", "{:.0f}"))]),
    "two_process": ("Two processes on this device: gradient average and buffer sync", [
        ("model", num("model")), ("res", num("res")), ("precision", num("precision")),
        ("backend", num("backend")), ("devices", lambda r: ", ".join(r.get("devices", []))),
        ("batch/rank", num("batch_per_rank")), ("steps", num("steps")), ("ranks equal", num("ranks_equal"))]),
    "compile": ("train.compile off and on", [
        ("model", num("model")), ("res", num("res")), ("precision", num("precision")),
        ("compile", lambda r: "" if "compile" not in r else r.get("compile_backend", "on") if r["compile"] else "off"),
        ("warm-up s", num("warmup_s", "{:.1f}")), ("img/s", num("images_per_s")),
        ("vs eager", num("speedup_vs_eager", "{:.2f}×"))]),
}


def table(columns: list[tuple[str, Cell]], rows: list[dict]) -> list[str]:
    heads = [head for head, _ in columns] + ["note"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = [cell(row) for _, cell in columns]
        cells[0] = cells[0] or row.get("label", "")  # a row with no numbers says what it was
        lines.append("| " + " | ".join(cells + [note(row)]) + " |")
    return lines


def with_compile_speedups(rows: list[dict]) -> list[dict]:
    """Compiled rows with their img/s over the same model's eager row."""
    eager = {r["model"]: r["images_per_s"] for r in rows if r.get("compile") is False and "images_per_s" in r}
    return [{**r, "speedup_vs_eager": r["images_per_s"] / eager[r["model"]]}
            if r.get("compile") and "images_per_s" in r and r["model"] in eager else r for r in rows]


def against_references(result: dict) -> list[str]:
    """StyleGAN's fastest 1024² step here against the published 1-GPU figures, raw and scaled by
    dense throughput (their GPU's vendor peak against this device's measured bf16 matmul)."""
    section = result["sections"].get("train_step", {})
    ours = [r for r in section.get("rows", []) if r.get("model") == "stylegan" and r.get("res") == 1024
            and "sec_per_kimg" in r]
    lines = ["", "## StyleGAN at 1024² against the published 1-GPU figures", ""]
    if not ours:
        return lines + ["No StyleGAN 1024² step was measured in this run."]
    best = min(ours, key=lambda r: r["sec_per_kimg"])
    peak = section.get("info", {}).get("ceiling_tflops", {}).get("matmul_bf16")
    lines += [f"Ours: {best['sec_per_kimg']:.1f} s/kimg ({best['precision']}, batch {best['batch']} per GPU, "
              f"StyleGAN (2019) with R1 every step), this device's measured bf16 matmul: "
              f"{peak:.0f} TFLOP/s." if peak else f"Ours: {best['sec_per_kimg']:.1f} s/kimg.", "",
              "| reference | their s/kimg | their GPU's dense TFLOP/s | theirs scaled to this device, s/kimg "
              "| ours faster than theirs | ours against theirs scaled |", "|---|---|---|---|---|---|"]
    ours_s = best["sec_per_kimg"]
    for name, shown, s_per_kimg, their_peak in REFERENCES:
        scaled = f"{s_per_kimg * their_peak / peak:.1f}" if peak else ""
        against_scaled = f"{s_per_kimg * their_peak / peak / ours_s:.2f}×" if peak else ""
        lines.append(f"| {name} | {shown} | {their_peak:.0f} | {scaled} | {s_per_kimg / ours_s:.2f}× | {against_scaled} |")
    return lines


def header(result: dict) -> list[str]:
    device = result.get("device") or {}
    name = device.get("name", "unknown device")
    memory = f", {device['memory_gib']} GiB" if "memory_gib" in device else ""
    lines = [f"# GPU check: {name}{memory}, torch {device.get('torch', '?')}, {result['started']}", "",
             f"Status: {result['status']}; {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget"
             f"{' (tiny mode)' if result['plan']['tiny'] else ''}.", "",
             "Sections: " + "; ".join(f"{name} {s['status']} ({s['seconds']:.0f} s)"
                                      for name, s in result["sections"].items()) + "."]
    ceiling = result["sections"].get("train_step", {}).get("info", {}).get("ceiling_tflops")
    if ceiling:
        lines += ["", "Measured ceiling, TFLOP/s: " + ", ".join(f"{k} {v:.3f}" for k, v in ceiling.items()) + "."]
    return lines


def render(result: dict) -> str:
    lines = header(result)
    for name, section in result["sections"].items():
        title, columns = TABLES[name]
        rows = with_compile_speedups(section["rows"]) if name == "compile" else section["rows"]
        lines += ["", f"## {title}", ""] + (table(columns, rows) if rows else [f"Nothing measured ({section['status']})."])
        if name == "train_step":
            lines += against_references(result)
    return "\n".join(lines) + "\n"
