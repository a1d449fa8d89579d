"""Two processes over gloo (`accelerate launch --multi_gpu` on CPU) and two "nodes" on loopback:
the ranks train in sync across a growth boundary, with every model the trainer serves."""

from __future__ import annotations

import subprocess

import pytest
from train_helpers import ROOT, accelerate_launch, checkpoints, cpu_env, free_port, meta, metrics

pytestmark = pytest.mark.slow


def _run(cmds: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    for r in results:
        assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
    return results


def _assert_ranks_in_sync(run) -> None:
    for ckpt in checkpoints(run):
        info = meta(ckpt)
        assert info["world_size"] == 2
        rows = info["rank_checksums"]
        assert len(rows) == 2 and rows[0] == rows[1], (ckpt.name, rows)


@pytest.mark.parametrize("model", ["progan", "stylegan"])
def test_two_processes_stay_in_sync_across_growth(tmp_path, synthetic_data, model):
    run = tmp_path / "run"
    # 12 steps: 4² for 8, then into the 8² fade; global batch 8 = 4 per rank.
    _run([accelerate_launch(run, synthetic_data, "train.max_steps=12", f"model.name={model}", port=free_port())])
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["resolution"] == 8
    assert [meta(c)["kind"] for c in checkpoints(run)] == ["phase_end", "final"]
    _assert_ranks_in_sync(run)


def test_conditional_stylegan_stays_in_sync(tmp_path, labelled_data):
    """Each rank's fakes take its own share's labels; the per-class w_avg is averaged as w_avg is."""
    run = tmp_path / "run"
    _run([accelerate_launch(run, labelled_data, "train.max_steps=12", "model.name=stylegan", "model.conditional=true",
                            port=free_port())])
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    _assert_ranks_in_sync(run)


def test_dcgan_with_sync_batchnorm_stays_in_sync(tmp_path, synthetic_data):
    run = tmp_path / "run"
    _run([accelerate_launch(run, synthetic_data, "train.max_steps=4", "schedule.start_res=32", "schedule.max_res=32",
                            "model.base_width=8", "loss.name=lsgan", port=free_port(),
                            script="train_baseline.py", config="configs/dcgan_celebahq64.yaml")])
    state = meta(checkpoints(run)[-1])
    assert state["config"]["model"]["sync_batchnorm"] == "auto"
    _assert_ranks_in_sync(run)


def test_two_nodes_on_loopback(tmp_path, synthetic_data):
    run = tmp_path / "run"
    port = free_port()
    cmds = [accelerate_launch(run, synthetic_data, "train.max_steps=10", num_processes=2, num_machines=2, port=port,
                              extra_launch=["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"])
            for rank in (0, 1)]
    _run(cmds)
    assert [r["step"] for r in metrics(run)] == list(range(1, 11))
    _assert_ranks_in_sync(run)


def test_batch_that_does_not_split_is_rejected(tmp_path, synthetic_data):
    run = tmp_path / "run"
    cmd = accelerate_launch(run, synthetic_data, "train.max_steps=2", "schedule.batch_size=7", port=free_port())
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "schedule.batch_size: global batch 7 at 4x4 is not divisible by 2 processes" in proc.stderr
    assert not run.exists()


def test_launch_that_would_not_synchronise_is_refused(tmp_path, synthetic_data):
    """`--multi_gpu` on a CPU machine without ACCELERATE_USE_CPU starts two processes with no
    process group (SETUP.md): the guard stops both before anything is written."""
    run = tmp_path / "run"
    env = cpu_env()
    env.pop("ACCELERATE_USE_CPU")
    cmd = accelerate_launch(run, synthetic_data, "train.max_steps=2", port=free_port())
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: Accelerate sees 1 process(es) but WORLD_SIZE is 2" in proc.stderr
    assert not run.exists()
