"""pipelines/generate.py on real checkpoints of tiny StyleGAN and ProGAN runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image
from train_helpers import ROOT, train

sys.path.insert(0, str(ROOT / "pipelines"))
import generate  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data):
    root = tmp_path_factory.mktemp("gen")
    # 12 steps: into the 8² fade, so the checkpoint sits mid-fade at alpha 0.5.
    for model in ("stylegan", "progan"):
        train(root / model, synthetic_data, "train.max_steps=12", f"model.name={model}")
    return root


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_grid(runs, tmp_path):
    out = tmp_path / "grid.png"
    assert generate.main(["--checkpoint", str(runs / "stylegan"), "--out", str(out), "--num", "9"]) == 0
    # 3x3 tiles of 8², each shown 4x enlarged (32 px: save_grid's MIN_TILE), with 2-pixel padding.
    assert _png(out).shape == (3 * 34 + 2, 3 * 34 + 2, 3)


def test_same_seed_same_image(runs, tmp_path):
    a, b = tmp_path / "a/", tmp_path / "b/"
    generate.main(["--checkpoint", str(runs / "stylegan"), "--out", f"{a}/", "--num", "4", "--seed", "10"])
    generate.main(["--checkpoint", str(runs / "stylegan"), "--out", f"{b}/", "--num", "2", "--seed", "12",
                   "--batch-size", "1"])
    assert sorted(p.name for p in a.iterdir()) == ["seed0010.png", "seed0011.png", "seed0012.png", "seed0013.png"]
    assert np.array_equal(_png(a / "seed0012.png"), _png(b / "seed0012.png"))
    assert np.array_equal(_png(a / "seed0013.png"), _png(b / "seed0013.png"))
    assert not np.array_equal(_png(a / "seed0010.png"), _png(a / "seed0011.png"))


def test_truncation_zero_gives_the_average_face(runs, tmp_path):
    out = tmp_path / "t/"
    generate.main(["--checkpoint", str(runs / "stylegan"), "--out", str(out) + "/", "--num", "3", "--truncation", "0"])
    images = [_png(p) for p in sorted(out.iterdir())]
    assert all(np.array_equal(images[0], im) for im in images[1:])


def test_mixing_interpolation_and_truncation_sweep(runs, tmp_path, capsys):
    ck = str(runs / "stylegan")
    assert generate.main(["--checkpoint", ck, "--out", str(tmp_path / "m.png"), "--mode", "mixing", "--num", "4",
                          "--rows", "2", "--mix-layers", "0-1"]) == 0
    # Tiles of 8² shown at 32 px (save_grid's MIN_TILE), 2-pixel padding.
    assert _png(tmp_path / "m.png").shape[:2] == (3 * 34 + 2, 5 * 34 + 2)
    assert generate.main(["--checkpoint", ck, "--out", str(tmp_path / "i.png"), "--mode", "interpolation",
                          "--steps", "6"]) == 0
    strip = _png(tmp_path / "i.png")
    assert strip.shape[:2] == (36, 6 * 34 + 2)
    tiles = [strip[2:34, 2 + 34 * i: 34 + 34 * i] for i in range(6)]
    assert not np.array_equal(tiles[0], tiles[-1])
    assert generate.main(["--checkpoint", ck, "--out", str(tmp_path / "s.png"), "--mode", "truncation",
                          "--num", "2"]) == 0
    # The sweep's psi values are said, column by column.
    assert "columns, left to right: psi 1.0 0.85 0.7 0.5 0.25 0.0; rows: seeds 0 .. 1" in capsys.readouterr().out


def test_progan_grid_and_interpolation(runs, tmp_path):
    ck = str(runs / "progan")
    assert generate.main(["--checkpoint", ck, "--out", str(tmp_path / "g.png"), "--num", "4"]) == 0
    assert generate.main(["--checkpoint", ck, "--out", str(tmp_path / "i.png"), "--mode", "interpolation"]) == 0


def test_style_options_need_a_stylegan(runs, tmp_path, capsys):
    code = generate.main(["--checkpoint", str(runs / "progan"), "--out", str(tmp_path / "x.png"), "--truncation", "0.5"])
    assert code == 2
    assert "needs a StyleGAN checkpoint (this one is progan)" in capsys.readouterr().err
    assert generate.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/file"], "--checkpoint: {tmp}/file is a file; give a checkpoint directory, "
                                      "a checkpoints/ folder or a run directory"),
    (["--checkpoint", "{tmp}/missing"], "--checkpoint: no such directory: {tmp}/missing"),
    (["--checkpoint", "{tmp}/empty"], "--checkpoint: {tmp}/empty is empty"),
    (["--checkpoint", "{tmp}/other"], "--checkpoint: {tmp}/other holds no complete checkpoint"),
    (["--out", "{tmp}/file/x.png"], "--out: {tmp}/file/x.png is inside {tmp}/file, which is a file, not a directory"),
    (["--out", "{tmp}/file/"], "--out: {tmp}/file/ is a file, not a directory"),
    (["--out", "{tmp}/file/samples/"], "--out: {tmp}/file/samples/ is inside {tmp}/file, which is a file, "
                                        "not a directory"),
    (["--out", "{tmp}/noext"], "--out: {tmp}/noext has no image file extension (such as .png or .jpg)"),
    (["--out", "{tmp}/empty", "--mode", "interpolation"],
     "--out: {tmp}/empty is a directory; give an image file name such as {tmp}/empty/out.png"),
])
def test_wrong_kind_of_path_is_one_line(runs, args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path) for a in args]
    defaults = {"--checkpoint": str(runs / "progan"), "--out": str(tmp_path / "g.png")}
    args += [item for key, value in defaults.items() if key not in args for item in (key, value)]
    assert generate.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [f"error: {message.format(tmp=tmp_path)}"]
    assert sorted(tmp_path.rglob("*")) == before
