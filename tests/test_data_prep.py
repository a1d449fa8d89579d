"""data_prep: every source kind, bad inputs, conversions, determinism, resume, verify, CLI."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from data_helpers import tree_bytes, write_zip

from data_prep import NoUsableImages, PrepError, prepare, verify
from data_prep.cli import main
from data_prep.files import MB, FileTooLarge, read_at_most
from data_prep.keys import unique_keys
from data_prep.pipeline import run_prepare

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers that make inputs

def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _halves(w: int, h: int, left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    im = Image.new(mode, (w, h), left)
    im.paste(right, (w // 2, 0, w, h))
    return im


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of w x h zeros: tiny on disk, huge once decoded."""
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(h // 1000))
    idat += comp.compress(row * (h % 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _rotated_jpeg() -> bytes:
    """Stored left red / right blue, EXIF orientation 6: upright it is top red / bottom blue."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_halves(32, 32, (255, 0, 0), (0, 0, 255)), "JPEG", quality=95,
                   exif=exif.tobytes())


GOOD = {  # relative path -> bytes; all at least 16 pixels on the short side
    "good/rgb.jpg": _encode(_noise(40, 24), "JPEG", quality=90),
    "good/gray.png": _encode(Image.new("L", (20, 20), 100), "PNG"),
    "good/cmyk.jpg": _encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG", quality=95),
    "good/deep16.png": _encode(Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)), "PNG"),
    "good/rgba.png": _encode(_halves(20, 20, (0, 0, 0, 0), (255, 0, 0, 255), "RGBA"), "PNG"),
    "good/la.png": _encode(Image.new("LA", (20, 20), (0, 0)), "PNG"),
    "good/rotated.jpg": _rotated_jpeg(),
    "sub/deeper/10.png": _encode(_noise(16, 16, 1), "PNG"),
    "sub/deeper/2.png": _encode(_noise(16, 16, 2), "PNG"),
}


def _palette_with_transparency() -> bytes:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (10, 0, 20, 20))  # right half blue, left half index 0 = transparent
    return _encode(im, "PNG", transparency=0)


GOOD["good/palette_trns.png"] = _palette_with_transparency()

_valid_jpeg = _encode(_noise(64, 64, 3), "JPEG", quality=95)
_valid_png = _encode(_noise(64, 64, 4), "PNG")
BAD = {  # relative path -> (bytes, expected words in the reason)
    "bad/truncated.jpg": (_valid_jpeg[: len(_valid_jpeg) // 2], "corrupt or truncated"),
    "bad/truncated.png": (_valid_png[: len(_valid_png) // 2], "corrupt or truncated"),
    "bad/empty.png": (b"", "empty file"),
    "bad/text.jpg": (b"this is not a picture\n" * 20, "not an image"),
    "bad/random.png": (random.Random(0).randbytes(3000), ""),
    "bad/bomb.png": (_bomb_png(20000, 20000), "decompression bomb"),
    "bad/small.png": (_encode(Image.new("RGB", (8, 8), "red"), "PNG"), "too small"),
}
IGNORED = {"notes.txt": b"hello", ".DS_Store": b"\x00\x01", ".hidden/x.png": GOOD["good/gray.png"]}
PREP = dict(max_res=16, min_res=4, shard_size=4, progress=False)


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _messy_files() -> dict[str, bytes]:
    return {**GOOD, **{k: v for k, (v, _) in BAD.items()}, **IGNORED}




def _members(path: Path) -> list[tuple[str, np.ndarray]]:
    with tarfile.open(path) as tar:
        return [(m.name, np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))))
                for m in tar]


def _images(out: Path, res: int) -> dict[str, np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    found = {}
    for shard in manifest["shards"][str(res)]:
        for name, arr in _members(out / shard["path"]):
            found[name.split(".")[0]] = arr
    return found


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """python -m data_prep ARGS, killed with its workers if still running after `timeout`,
    so that a run blocked on a FIFO fails its test instead of hanging it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep", *args], cwd=ROOT, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"data_prep {' '.join(args)}: still running after {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------- shared prepared outputs

@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("messy"), _messy_files())


@pytest.fixture(scope="module")
def messy_out(messy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("messy_out")
    prepare(str(messy), out, workers=1, **PREP)
    return out


# ---------------------------------------------------------------- sources and conversions

def test_messy_folder_manifest(messy_out):
    m = json.loads((messy_out / "manifest.json").read_text())
    assert m["format"] == "gan_hr-shards" and m["version"] == 1
    assert m["resolutions"] == [4, 8, 16]
    assert m["num_images"] == len(GOOD)
    assert m["image_format"] == "png" and m["shard_size"] == 4
    counts = [[s["count"] for s in m["shards"][str(r)]] for r in m["resolutions"]]
    assert counts == [[4, 4, 2]] * 3
    assert m["shards"]["8"][1]["path"] == "8/shard-000001.tar"
    reasons = {s["source"]: s["reason"] for s in m["skipped"]}
    # Every bad input is listed once, with its reason; ignored files are not listed.
    assert set(reasons) == set(BAD)
    for rel, (_, words) in BAD.items():
        assert words in reasons[rel], (rel, reasons[rel])


def test_every_resolution_holds_the_same_keys_in_order(messy_out):
    keys = {}
    for res in (4, 8, 16):
        for i in range(3):
            members = _members(messy_out / f"{res}/shard-{i:06d}.tar")
            assert all(arr.shape == (res, res, 3) and arr.dtype == np.uint8 for _, arr in members)
            keys.setdefault(i, [n for n, _ in members])
            assert [n for n, _ in members] == keys[i]
    flat = [k for i in range(3) for k in keys[i]]
    assert len(set(flat)) == len(GOOD)
    assert all(k.count(".") == 1 and k.endswith(".png") and "/" not in k for k in flat)
    # Natural order: 2 before 10.
    assert flat.index("sub_deeper_2.png") < flat.index("sub_deeper_10.png")


def test_conversions_to_rgb(messy_out):
    img = _images(messy_out, 16)
    red, blue, white = np.array([255, 0, 0]), np.array([0, 0, 255]), np.array([255, 255, 255])

    def near(a, colour, tol=40):
        return np.abs(a.astype(int) - colour).max() <= tol

    # EXIF orientation 6 applied: top half red, bottom half blue, on both sides.
    rot = img["good_rotated"]
    assert near(rot[2, 2], red) and near(rot[2, 13], red)
    assert near(rot[13, 2], blue) and near(rot[13, 13], blue)
    assert near(img["good_cmyk"][8, 8], red, tol=60)
    # 16-bit scaled (not clipped) to 8 bits; grayscale becomes equal channels.
    assert np.abs(img["good_deep16"].astype(int) - 128).max() <= 1
    assert (img["good_gray"] == 100).all()
    # Transparency composited over white.
    assert near(img["good_rgba"][8, 1], white, 2) and near(img["good_rgba"][8, 14], red, 2)
    assert near(img["good_palette_trns"][8, 1], white, 2)
    assert near(img["good_palette_trns"][8, 14], blue, 2)
    assert (img["good_la"] == 255).all()


def test_lower_resolutions_are_box_halvings(messy_out):
    hi, lo = _images(messy_out, 16), _images(messy_out, 8)
    for key in hi:
        a, b = hi[key], lo[key]
        pooled = a.astype(float).reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
        assert np.abs(pooled - b).max() <= 1


def test_zip_of_the_same_folder_gives_identical_output(messy, messy_out, tmp_path):
    files = _messy_files()
    src = write_zip(tmp_path / "messy.zip", files)
    out = tmp_path / "out"
    m = prepare(str(src), out, workers=1, **PREP)
    ref = json.loads((messy_out / "manifest.json").read_text())
    assert m["skipped"] == ref["skipped"]
    assert m["num_images"] == ref["num_images"]
    a, b = tree_bytes(out), tree_bytes(messy_out)
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b


def test_zip_slip_member_writes_nothing_outside(tmp_path):
    good = _encode(_noise(20, 20, 5), "PNG")
    src = write_zip(tmp_path / "slip.zip", {"../../evil.png": good, "/abs/root.png": good,
                                       "ok.png": good})
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "a" / "b" / "out"
    m = prepare(str(src), out, workers=1, **PREP)
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents or p in out.parents for p in new), new
    assert not any("evil" in p.name or "root" in p.name for p in new)
    assert m["num_images"] == 3
    assert set(_images(out, 16)) == {"evil", "abs_root", "ok"}


def test_special_and_oversized_files_are_skipped_unread(tmp_path):
    src = _write_tree(tmp_path / "src", {
        "a.png": GOOD["sub/deeper/10.png"],
        "b.jpg": GOOD["good/rgb.jpg"],
        "big.png": GOOD["good/gray.png"] + bytes(2 * MB),  # a valid image, 2 MB on disk
    })
    os.mkfifo(src / "fifo.png")
    (src / "zero.png").symlink_to("/dev/zero")
    (src / "dangling.png").symlink_to(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    (src / "folder.png").symlink_to(tmp_path / "folder")
    out = tmp_path / "out"
    # One worker: a build that opened inputs blindly would block on fifo.png (sorted before
    # zero.png) and be killed by the timeout, instead of reading /dev/zero until memory runs out.
    run = _run_cli("--src", str(src), "--out", str(out), "--max-res", "16", "--max-file-mb", "1",
                   "--workers", "1", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "2 images written, 5 skipped" in run.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == [
        {"source": "big.png", "reason": "larger than --max-file-mb 1 MB"},
        {"source": "dangling.png", "reason": "not a regular file (dangling symlink)"},
        {"source": "fifo.png", "reason": "not a regular file (FIFO)"},
        {"source": "folder.png", "reason": "not a regular file (directory)"},
        {"source": "zero.png", "reason": "not a regular file (character device)"},
    ]
    assert m["params"]["max_file_mb"] == 1
    assert list(_images(out, 16)) == ["a", "b"]


def test_max_file_mb_bounds_zip_members(tmp_path):
    # Deflated, the 2 MB member takes a few kB in the zip: only its stated size gives it away.
    src = write_zip(tmp_path / "z.zip", {"a.png": GOOD["sub/deeper/2.png"],
                                    "big.png": GOOD["good/gray.png"] + bytes(2 * MB)})
    m = prepare(str(src), tmp_path / "o1", workers=1, max_file_mb=1, **PREP)
    assert m["num_images"] == 1
    assert m["skipped"] == [{"source": "big.png", "reason": "larger than --max-file-mb 1 MB"}]
    assert prepare(str(src), tmp_path / "o2", workers=1, **PREP)["num_images"] == 2


def test_read_at_most_stops_one_byte_past_the_bound():
    # Like /dev/zero or a procfs file, a stream that does not say how long it is.
    class Endless:
        served = 0

        def read(self, n: int) -> bytes:
            self.served += n
            return bytes(n)

    bound = 3 * MB + 5  # several reads
    endless = Endless()
    with pytest.raises(FileTooLarge):
        read_at_most(endless, bound)
    assert endless.served == bound + 1
    assert read_at_most(io.BytesIO(b"x" * bound), bound) == b"x" * bound


def test_synthetic_source_keys_and_counts(tmp_path):
    m = prepare("synthetic:5", tmp_path / "o", max_res=8, shard_size=2, progress=False, workers=1)
    assert m["num_images"] == 5 and m["skipped"] == [] and m["source"] == "synthetic:5"
    assert [s["count"] for s in m["shards"]["8"]] == [2, 2, 1]
    assert list(_images(tmp_path / "o", 4)) == [f"synth-{i:06d}" for i in range(5)]


def test_celebahq_layout_zip_large_jpegs(tmp_path):
    # The usual distribution: CelebA-HQ-img/<n>.jpg at 1024x1024, read in place from a zip.
    big = _noise(64, 64, 9).resize((1024, 1024), Image.Resampling.BICUBIC)
    names = ["CelebA-HQ-img/10.jpg", "CelebA-HQ-img/2.jpg", "CelebA-HQ-img/0.jpg"]
    src = write_zip(tmp_path / "CelebAMask-HQ.zip", {n: _encode(big, "JPEG", quality=95) for n in names})
    out = tmp_path / "out"
    prepare(str(src), out, max_res=32, progress=False, workers=1)
    got = _images(out, 32)
    assert list(got) == ["celeba_hq_img_0", "celeba_hq_img_2", "celeba_hq_img_10"]
    # The reduced-size JPEG decode stays close to a full decode + Lanczos.
    full = np.asarray(Image.open(io.BytesIO(_encode(big, "JPEG", quality=95))).convert("RGB")
                      .resize((32, 32), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(got["celeba_hq_img_0"] - full).mean() < 3


def test_jpeg_format_and_upscale(tmp_path):
    small = _write_tree(tmp_path / "src", {"tiny.png": _encode(_noise(8, 8), "PNG")})
    m = prepare(str(small), tmp_path / "o", max_res=16, image_format="jpg", allow_upscale=True,
                progress=False, workers=1)
    assert m["image_format"] == "jpg" and m["num_images"] == 1 and m["skipped"] == []
    with tarfile.open(tmp_path / "o/16/shard-000000.tar") as tar:
        (member,) = tar.getmembers()
        assert member.name == "tiny.jpg"
        im = Image.open(tar.extractfile(member))
        assert im.format == "JPEG" and im.size == (16, 16) and im.mode == "RGB"


def test_bomb_limit_option_covers_pillow_warning_and_error(tmp_path):
    # 1200 pixels is between the limit and twice it (Pillow warns), 2500 is above (Pillow errors).
    src = _write_tree(tmp_path / "src", {
        "warn.png": _encode(Image.new("RGB", (40, 30)), "PNG"),
        "error.png": _encode(Image.new("RGB", (50, 50)), "PNG"),
        "fine.png": _encode(Image.new("RGB", (30, 30)), "PNG")})
    limit_before = Image.MAX_IMAGE_PIXELS
    m = prepare(str(src), tmp_path / "o", max_res=16, max_pixels=1000, progress=False, workers=1)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the global is restored
    reasons = {s["source"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"warn.png", "error.png"}
    assert all("decompression bomb" in r for r in reasons.values())


def test_unique_keys():
    names = ["A/b c.png", "a/b_c.jpg", "x.png", "x.png", "évé.png", "y/" + "long" * 40 + ".png"]
    keys = unique_keys(names)
    assert len(set(keys)) == len(names)
    assert all(k and "." not in k and "/" not in k and len(k) <= 64 for k in keys)
    assert unique_keys(["dir/Photo 01.JPG"]) == ["dir_photo_01"]


# ---------------------------------------------------------------- determinism and resume

def test_worker_count_does_not_change_a_byte(messy, messy_out, tmp_path):
    prepare(str(messy), tmp_path / "messy2", workers=2, **PREP)
    assert tree_bytes(tmp_path / "messy2") == tree_bytes(messy_out)
    one = prepare("synthetic:30", tmp_path / "s1", max_res=16, shard_size=7, workers=1,
                  progress=False)
    two = prepare("synthetic:30", tmp_path / "s2", max_res=16, shard_size=7, workers=2,
                  progress=False)
    assert one == two
    assert tree_bytes(tmp_path / "s1") == tree_bytes(tmp_path / "s2")


def test_rerun_reuses_complete_output_and_rejects_other_settings(tmp_path):
    out = tmp_path / "o"
    first = run_prepare("synthetic:6", out, max_res=8, progress=False, workers=1)
    stamp = (out / "8/shard-000000.tar").stat().st_mtime_ns
    again = run_prepare("synthetic:6", out, max_res=8, progress=False, workers=1)
    assert again.reused and again.processed == 0 and again.manifest == first.manifest
    assert (out / "8/shard-000000.tar").stat().st_mtime_ns == stamp
    with pytest.raises(PrepError, match="max_res"):
        prepare("synthetic:6", out, max_res=16, progress=False, workers=1)
    with pytest.raises(PrepError, match="other inputs"):
        prepare("synthetic:7", out, max_res=8, progress=False, workers=1)


def test_kill_9_mid_run_then_resume_is_byte_identical(tmp_path):
    out = tmp_path / "killed"
    args = ["--src", "synthetic:600", "--max-res", "32", "--shard-size", "30", "--seed", "3"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep", *args, "--out", str(out), "--workers", "1",
         "--no-progress"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    first, second = out / "32" / "shard-000000.tar", out / "32" / "shard-000001.tar"
    # Once shard 1 is in place the progress state records shard 0 as done.
    deadline = time.monotonic() + 120
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert second.exists() and not (out / "manifest.json").exists(), "killed too late to test"
    # Whatever is under a final name is a complete shard.
    for shard in out.glob("*/shard-*.tar"):
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) == 30
    stamp = first.stat().st_mtime_ns

    resumed = run_prepare("synthetic:600", out, max_res=32, shard_size=30, seed=3, workers=1,
                          progress=False)
    assert 0 < resumed.processed < 600  # finished shards were reused, not redone
    assert first.stat().st_mtime_ns == stamp
    clean = tmp_path / "clean"
    assert main([*args, "--out", str(clean), "--workers", "2", "--no-progress"]) == 0
    assert tree_bytes(out) == tree_bytes(clean)
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------- verify and CLI

def test_verify_passes_then_catches_tampering(messy_out, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(messy_out, out)
    assert verify(out, workers=1).ok
    assert main(["--verify", str(out), "--workers", "2"]) == 0
    assert "OK" in capsys.readouterr().out

    shard = out / "8" / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[2]
    with open(shard, "r+b") as f:  # scribble over one member's image data
        f.seek(member.offset_data)
        f.write(b"\xff" * member.size)
    report = verify(out, workers=1)
    assert not report.ok and any(member.name in e and "decode" in e for e in report.errors)
    assert main(["--verify", str(out)]) == 1

    shutil.rmtree(out)
    shutil.copytree(messy_out, out)
    (out / "4" / "shard-000002.tar").unlink()
    assert not verify(out, workers=1).ok
    shutil.rmtree(out)
    shutil.copytree(messy_out, out)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"]["16"][0]["count"] = 3
    (out / "manifest.json").write_text(json.dumps(m))
    assert not verify(out, workers=1).ok


def test_cli_closing_line_and_exit_codes(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["--src", "synthetic:6", "--out", str(out), "--max-res", "8",
                 "--workers", "1", "--no-progress", "--verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 images written, 0 skipped" in text and " s " in text and "OK" in text

    assert main(["--src", str(tmp_path / "missing"), "--out", str(out)]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["--src", "synthetic:2", "--out", str(tmp_path / "file" / "o")]) == 2
    assert main(["--out", str(out)]) == 2
    assert main(["--src", "synthetic:2", "--out", str(out), "--max-res", "24"]) == 2
    bad_only = _write_tree(tmp_path / "bad", {"a.png": b"", "b.jpg": b"nope"})
    assert main(["--src", str(bad_only), "--out", str(tmp_path / "o2"), "--max-res", "8",
                 "--no-progress"]) == 1
    assert "no usable image" in capsys.readouterr().err
    with pytest.raises(NoUsableImages):
        prepare(str(bad_only), tmp_path / "o3", max_res=8, progress=False, workers=1)


def test_cli_special_src_or_file_out_is_one_line_and_exit_2(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero.zip").symlink_to("/dev/zero")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--src", str(tmp_path / "fifo"), "--out", str(tmp_path / "o")], "(a FIFO)"),
        (["--src", str(tmp_path / "zero.zip"), "--out", str(tmp_path / "o")],
         "(a character device)"),
        (["--src", "synthetic:2", "--out", str(tmp_path / "file")], "exists and is not a folder"),
    ]
    for args, words in cases:
        run = _run_cli(*args, "--max-res", "8", "--no-progress", timeout=30)
        assert run.returncode == 2, run.stderr
        assert run.stdout == ""
        [line] = run.stderr.splitlines()
        assert line.startswith("data_prep: error: ") and words in line, line
    assert not (tmp_path / "o").exists()
