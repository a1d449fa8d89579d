"""Generator evaluation: what is compared, determinism, the RNG, processes; evaluate.py; learning."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from test_fid import random_weights  # noqa: F401  (a module-scoped fixture: random Inception weights)
from train_helpers import ROOT, cpu_env, train

import gan_hr.evaluation as evaluation
from gan_hr.config import Config, ModelConfig
from gan_hr.data import ShardStream, load_manifest, resolution_shards
from gan_hr.evaluation import Evaluator
from gan_hr.inference import load_generator
from gan_hr.metrics import compute_swd
from gan_hr.metrics.fid import INCEPTION_WEIGHTS_ENV
from gan_hr.metrics.swd import swd_descriptors, swd_floor_from_descriptors
from gan_hr.path_args import PathArgError, saved_data_root
from gan_hr.models import build_generator
from gan_hr.plots import resolution_spans
from gan_hr.sampling import latents_from_seeds, to_uint8
from gan_hr.training.run_dir import read_metrics

sys.path.insert(0, str(ROOT / "pipelines"))
import evaluate  # noqa: E402

TINY_MODEL = {"channel_base": 128, "channel_max": 16, "latent_dim": 16, "w_dim": 16, "mapping_layers": 2}


def tiny_generator(name: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_generator(ModelConfig(name=name, **TINY_MODEL), 32).eval()


def first_reals(data: Path, n: int, resolution: int = 16, seed: int = 0) -> torch.Tensor:
    shards = resolution_shards(load_manifest(str(data)), str(data), resolution)
    return next(iter(ShardStream(shards, batch_size=n, resolution=resolution, seed=seed, slots=1)))["image"]


def test_swd_compares_the_first_reals_with_seeded_fakes(synthetic_data):
    G = tiny_generator("progan")
    got = Evaluator(str(synthetic_data), ["swd"], num_images=20, batch_size=8, seed=3)(G, 32, 1.0)
    with torch.no_grad():
        fakes = to_uint8(G(latents_from_seeds(range(3, 23), G.latent_dim), 32, 1.0))
    assert got == compute_swd(first_reals(synthetic_data, 20, resolution=32, seed=3), fakes, seed=3)
    assert set(got) == {"swd_32", "swd_16", "swd_mean"} and got["swd_mean"] > 0


def test_global_rng_and_training_mode_are_left_alone(synthetic_data):
    G = tiny_generator("stylegan").train()
    w_avg = G.w_avg.clone()
    evaluator = Evaluator(str(synthetic_data), ["swd"], num_images=8, batch_size=4)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = evaluator(G, 16, 0.5, truncation_psi=0.7)
    assert torch.equal(torch.get_rng_state(), before)
    # Same numbers from another global RNG state: nothing inside draws from it (StyleGAN's
    # style mixing and random noise would), and G ran in eval mode (w_avg not updated).
    torch.manual_seed(2)
    assert evaluator(G, 16, 0.5, truncation_psi=0.7) == first
    assert G.training and torch.equal(G.w_avg, w_avg)
    assert evaluator(G, 16, 0.5) != first  # truncation reached the generator


def test_bad_requests_are_refused(synthetic_data):
    G = tiny_generator("progan")
    evaluator = Evaluator(str(synthetic_data), ["swd"], num_images=4)
    assert evaluator.metrics_at(8) == [] and evaluator.metrics_at(16) == ["swd"]
    with pytest.raises(ValueError, match="SWD needs images of at least 16"):
        evaluator(G, 8, 1.0)
    with pytest.raises(ValueError, match="truncation needs a StyleGAN"):
        evaluator(G, 16, 1.0, truncation_psi=0.5)
    with pytest.raises(ValueError, match="unknown metrics"):
        Evaluator(str(synthetic_data), ["is"], num_images=4)
    with pytest.raises(ValueError, match="would repeat images"):
        Evaluator(str(synthetic_data), ["swd"], num_images=257)


class ThreadGather:
    """accelerator.gather for ranks played by threads: concatenation in rank order."""

    def __init__(self, world_size: int):
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def for_rank(self, rank: int):
        def gather(x: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = x
            self.barrier.wait()
            out = torch.cat(self.slots)
            self.barrier.wait()  # everyone has read the slots before they are reused
            return out
        return gather


def test_two_processes_give_the_single_process_numbers(synthetic_data, random_weights, tmp_path):  # noqa: F811
    # 3 images over 2 ranks: the second rank's surplus image must be dropped. Batches of 1 keep
    # each Inception forward identical between the two layouts. KID takes the same feature path
    # as FID at a fraction of the cost (FID's 2048² eigendecompositions take seconds here).
    options = dict(num_images=3, batch_size=1, inception_weights=random_weights)
    G = tiny_generator("progan")
    single = Evaluator(str(synthetic_data), ["swd", "kid"], cache_dir=tmp_path / "one", **options)(G, 32, 1.0)
    gather = ThreadGather(2)
    evaluators = [Evaluator(str(synthetic_data), ["swd", "kid"], cache_dir=tmp_path / "two", rank=rank,
                            world_size=2, gather=gather.for_rank(rank), **options) for rank in range(2)]
    results: list[dict | BaseException | None] = [None, None]

    def rank_main(rank: int) -> None:
        try:
            results[rank] = evaluators[rank](G, 32, 1.0)
        except BaseException as exc:  # reported below; a dead rank would hang the other
            gather.barrier.abort()
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert results[0] == results[1]
    swd_keys = ("swd_32", "swd_16", "swd_mean")
    assert [results[0][k] for k in swd_keys] == [single[k] for k in swd_keys]
    for key in ("kid", "kid_std"):
        assert results[0][key] == pytest.approx(single[key], rel=1e-6, abs=1e-12)
    assert all(math.isfinite(v) for v in single.values())


def test_fid_caches_real_statistics(synthetic_data, random_weights, tmp_path, monkeypatch):  # noqa: F811
    G = tiny_generator("progan")
    evaluator = Evaluator(str(synthetic_data), ["fid", "kid"], num_images=4, batch_size=4,
                          inception_weights=random_weights, cache_dir=tmp_path)
    first = evaluator(G, 8, 1.0)
    assert set(first) == {"fid", "kid", "kid_std"} and all(math.isfinite(v) for v in first.values())
    assert [p.name.startswith("inception-8px-4img-seed0-") for p in tmp_path.iterdir()] == [True]

    streams = []

    class CountingStream(ShardStream):
        def __iter__(self):
            streams.append(self)
            return super().__iter__()

    monkeypatch.setattr(evaluation, "ShardStream", CountingStream)
    again = evaluator(G, 8, 1.0, metrics=["kid"])  # the cache serves both; KID is the cheap one
    assert again == {k: first[k] for k in ("kid", "kid_std")}
    assert streams == []  # the real images were not read again


# --------------------------------------------------------------------------- evaluate.py


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data) -> Path:
    """A tiny ProGAN 28 steps in: fading 16² in (alpha 0.375 at its last step)."""
    path = tmp_path_factory.mktemp("eval") / "run"
    train(path, synthetic_data, "train.max_steps=28")
    return path


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_cli_prints_one_json_line_and_appends_it(run, synthetic_data, capsys):
    assert evaluate.main(["--checkpoint", str(run), "--metric", "swd", "--num", "16", "--append-metrics"]) == 0
    captured = capsys.readouterr()
    (record,) = _json_lines(captured.out)
    assert record["step"] == 28 and record["resolution"] == 16 and record["alpha"] == 0.375
    # Every phase shows progress, and the score is printed beside its real-vs-real floor.
    assert "evaluate 16²" in captured.err and "swd distances" in captured.err
    assert f"swd_mean {record['swd_mean']:.1f} (real vs real floor {record['swd_floor_mean']:.1f}" in captured.err
    assert record["num_images"] == 16 and record["metric_source"] == "evaluate"
    trained = load_generator(run)
    # --data defaults to the data the run trained on. (Approximate: the CLI runs on a GPU if any.)
    expected = Evaluator(str(synthetic_data), ["swd"], num_images=16)(trained.generator, 16, 0.375)
    assert {k: record[k] for k in ("swd_16", "swd_mean")} == pytest.approx(expected, rel=1e-2)
    assert 0 < record["swd_floor_mean"] == record["swd_floor_16"]
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged == record


@pytest.mark.slow
def test_cli_fid_without_weights_says_where_to_get_them(run, capsys, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    assert evaluate.main(["--checkpoint", str(run), "--metric", "swd", "--metric", "fid"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    for part in ("weights-inception-2015-12-05-6726825d.pth", "https://", "--inception-weights", INCEPTION_WEIGHTS_ENV):
        assert part in captured.err


@pytest.mark.slow
def test_cli_inception_metric_with_weights(run, random_weights, tmp_path, capsys):  # noqa: F811
    # KID: the same weights and feature path as FID, without FID's seconds of eigendecomposition.
    args = ["--checkpoint", str(run), "--metric", "kid", "--num", "4",
            "--inception-weights", str(random_weights), "--cache-dir", str(tmp_path)]
    assert evaluate.main(args) == 0
    (record,) = _json_lines(capsys.readouterr().out)
    assert math.isfinite(record["kid"]) and math.isfinite(record["kid_std"]) and "swd_mean" not in record


@pytest.mark.slow
def test_cli_rejects_truncation_for_progan(run, capsys):
    assert evaluate.main(["--checkpoint", str(run), "--num", "4", "--truncation", "0.5"]) == 2
    assert "truncation needs a StyleGAN" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_of_a_trained_and_evaluated_run(run, tmp_path, capsys):
    import plot

    assert evaluate.main(["--checkpoint", str(run), "--num", "8", "--append-metrics"]) == 0
    assert plot.main([str(run), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()[-4:]
    assert written == [str(tmp_path / n) for n in ("losses.png", "regularization.png", "throughput.png", "swd.png")]
    # Phases end at 64 and 192 images (TINY: 8-step stretches of batch 8).
    assert resolution_spans(read_metrics(run / "metrics.jsonl")) == [
        (0.0, 0.064, 4), (0.064, 0.192, 8), (0.192, 0.224, 16)]


def test_default_data_is_the_set_the_trainer_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for root in ("d/s/synthetic-512-32", "celebahq"):
        (tmp_path / root).mkdir(parents=True)
        (tmp_path / root / "manifest.json").write_text("{}")
    cfg = Config()
    cfg.data.synthetic_dir, cfg.data.synthetic_images, cfg.schedule.max_res = "d/s", 512, 32
    assert saved_data_root(cfg) == str(tmp_path.resolve() / "d/s/synthetic-512-32")
    cfg.data.path = str(tmp_path / "celebahq")
    assert saved_data_root(cfg) == str(tmp_path.resolve() / "celebahq")


@pytest.mark.parametrize("path, synthetic_dir, message", [
    ("pipe:cat {path}", "data/synthetic", "the checkpoint's data.path 'pipe:cat {path}' is not a local directory"),
    ("https://host/data", "data/synthetic", "the checkpoint's data.path 'https://host/data' is not a local directory"),
    (None, "pipe:cat {path}", "the checkpoint's data.synthetic_dir 'pipe:cat {path}' is not a local directory"),
    # Path('./pipe:x') / name is 'pipe:x/name': the leading ./ must not turn it into a command.
    (None, "./pipe:x {path}", "the checkpoint's data './pipe:x {path}/synthetic-2048-1024' (from "
                              "data.synthetic_dir) is not a data_prep directory here"),
    ("/nonexistent/data", "data/synthetic", "the checkpoint's data '/nonexistent/data' (from data.path) is not"),
])
def test_saved_data_must_be_a_local_data_set(path, synthetic_dir, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config()
    cfg.data.path, cfg.data.synthetic_dir = path, synthetic_dir
    with pytest.raises(PathArgError, match=re.escape(message)):
        saved_data_root(cfg)


def _poison(run_dir: Path, data_path: str) -> None:
    """Write data_path into the config of the run's checkpoints and its config.yaml, as someone
    sharing a checkpoint could."""
    for meta_file in run_dir.glob("checkpoints/*/meta.json"):
        meta = json.loads(meta_file.read_text())
        meta["config"]["data"]["path"] = data_path
        meta_file.write_text(json.dumps(meta))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["path"] = data_path
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def _evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "evaluate.py"), *args], cwd=ROOT,
                          env=cpu_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_saved_pipe_command_never_runs_a_given_one_does(run, synthetic_data, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(run, shared)
    marker = tmp_path / "PWNED"
    poisoned = f"pipe:touch {marker}; cat {synthetic_data}/{{path}}"
    _poison(shared, poisoned)
    for checkpoint in (shared, next(shared.glob("checkpoints/step-*"))):
        proc = _evaluate_cli("--checkpoint", str(checkpoint), "--num", "4")
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"error: the checkpoint's data.path {poisoned!r} is not a local directory; pass --data DIR"]
        assert not marker.exists()
    # The same command given by the user is theirs to run.
    mine = tmp_path / "MINE"
    given = f"pipe:touch {mine}; cat {synthetic_data}/{{path}}"
    proc = _evaluate_cli("--checkpoint", str(shared), "--num", "4", "--data", given)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resolution"] == 16 and mine.exists() and not marker.exists()


def _files(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p), p.stat().st_mtime) for p in root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/file"], "--checkpoint: {tmp}/file is a file; give a checkpoint directory, "
                                      "a checkpoints/ folder or a run directory"),
    (["--checkpoint", "{tmp}/missing"], "--checkpoint: no such directory: {tmp}/missing"),
    (["--checkpoint", "{tmp}/empty"], "--checkpoint: {tmp}/empty is empty"),
    (["--checkpoint", "{tmp}/other"], "--checkpoint: {tmp}/other holds no complete checkpoint"),
    (["--checkpoint", "{tmp}/foreign"], "--checkpoint: {tmp}/foreign: meta.json has no valid 'kind'"),
    (["--data", "{tmp}/missing"], "--data: no such directory: {tmp}/missing"),
    (["--data", "{tmp}/file"], "--data: {tmp}/file is a file, not a data_prep directory"),
    (["--data", "{tmp}/other"], "--data: no manifest.json in {tmp}/other (run python -m data_prep)"),
    (["--cache-dir", "{tmp}/file"], "--cache-dir: {tmp}/file is a file, not a directory"),
    (["--cache-dir", "{tmp}/file/stats"], "--cache-dir: {tmp}/file/stats is inside {tmp}/file, which is a file, "
                                           "not a directory"),
])
def test_cli_wrong_kind_of_path_is_one_line(run, args, message, tmp_path, capsys):
    shared = tmp_path / "run"
    shutil.copytree(run, shared)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "meta.json").write_text("{}")
    torch.save({"G": {}, "D": {}, "G_ema": {}}, tmp_path / "foreign" / "models.pt")
    before = _files(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(shared)]
    assert evaluate.main([*args, "--num", "4", "--append-metrics"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [f"error: {message.format(tmp=tmp_path)}"]
    assert _files(tmp_path) == before


def test_swd_floor_is_the_real_halves_at_the_same_settings_and_is_cached(synthetic_data, tmp_path, monkeypatch):
    G = tiny_generator("progan")
    options = {"num_images": 20, "batch_size": 8, "seed": 3, "cache_dir": tmp_path}
    plain = Evaluator(str(synthetic_data), ["swd"], **options)(G, 32, 1.0)
    got = Evaluator(str(synthetic_data), ["swd"], swd_floor=True, **options)(G, 32, 1.0)
    # Real descriptors as the evaluator draws them: one position stream over all 20 images.
    reals = swd_descriptors(first_reals(synthetic_data, 20, resolution=32, seed=3), num_patches=128,
                            generator=torch.Generator().manual_seed(3))
    expected = swd_floor_from_descriptors(reals, 32, seed=3)
    assert got == {**plain, **expected}
    assert set(expected) == {"swd_floor_32", "swd_floor_16", "swd_floor_mean"} and 0 < expected["swd_floor_mean"]
    (cache,) = tmp_path.glob("swd-floor-32px-20img-seed3-*.json")
    assert json.loads(cache.read_text()) == expected

    def not_again(*args, **kwargs):
        raise AssertionError("the cached floor was computed again")

    monkeypatch.setattr(evaluation, "swd_floor_from_descriptors", not_again)
    assert Evaluator(str(synthetic_data), ["swd"], swd_floor=True, **options)(G, 32, 1.0) == got


def test_cli_metric_names_are_the_library_s():
    from gan_hr.metrics import METRICS

    assert evaluate.METRIC_NAMES == tuple(sorted(METRICS))
