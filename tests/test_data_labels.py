"""Labels: from class folders, a table (CelebA's attribute file, a CSV) or the synthetic shapes,
through data_prep, the shards, --verify and the stream; unusable tables stop before writing."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from data_helpers import tree_bytes, write_zip

from data_prep import PrepError, prepare, verify
from data_prep.cli import main
from data_prep.shards import ShardSetWriter
from data_prep.synthetic import _BACKGROUNDS, SHAPES, render_synthetic, synthetic_scene
from gan_hr.data import ShardStream, load_manifest, make_loader, resolution_shards
from gan_hr.manifest import manifest_problems

PREP = dict(max_res=16, shard_size=2, workers=1, progress=False)


def _png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root




def _shard_members(out: Path, res: int) -> list[tuple[str, bytes]]:
    manifest = json.loads((out / "manifest.json").read_text())
    members = []
    for shard in manifest["shards"][str(res)]:
        with tarfile.open(out / shard["path"]) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar]
    return members


def _label_members(out: Path, res: int) -> dict[str, bytes]:
    """key -> label member bytes, after checking every image is followed by its label."""
    members = _shard_members(out, res)
    images, labels = members[0::2], members[1::2]
    assert len(images) == len(labels)
    for (image, _), (label, _) in zip(images, labels, strict=True):
        assert image.endswith(".png") and image.split(".")[0] == label.split(".")[0], (image, label)
    return {name.split(".")[0]: data for name, data in labels}


def _epoch(out: Path, res: int, **kw) -> list[dict]:
    """One epoch of the labelled stream, one image per batch (one slot)."""
    manifest = load_manifest(str(out))
    shards = resolution_shards(manifest, str(out), res)
    stream = ShardStream(shards, batch_size=1, resolution=res, seed=0, slots=1, **kw)
    return list(itertools.islice(stream, manifest["num_images"]))


def _streamed_labels(out: Path, res: int) -> dict[str, object]:
    batches = _epoch(out, res, labels=True)
    assert all(b["skipped"] == 0 for b in batches)
    return {b["key"][0]: b["label"][0].tolist() for b in batches}


# ---------------------------------------------------------------- class folders

FOLDERS = {
    "cat/a.png": _png(0), "cat/b.png": _png(1),
    "dog/c.png": _png(2), "dog/sub/d.png": _png(3),  # the class is the first folder below SRC
    "bird/broken.png": b"",  # skipped as empty: its class keeps index 0, with 0 images
    "top.png": _png(4),  # no class folder: skipped
}
FOLDER_CLASSES = {"cat_a": 1, "cat_b": 1, "dog_c": 2, "dog_sub_d": 2}


def test_folder_classes_round_trip(tmp_path):
    src = _write_tree(tmp_path / "src", FOLDERS)
    out = tmp_path / "out"
    m = prepare(str(src), out, labels="folders", **PREP)
    assert m["version"] == 2 and m["num_images"] == 4
    assert m["labels"] == {"kind": "class", "names": ["bird", "cat", "dog"], "counts": [0, 2, 2],
                           "source": "folders"}
    assert m["skipped"] == [
        {"source": "bird/broken.png", "reason": "empty file"},
        {"source": "top.png", "reason": "no label: at the top level of --src, not in a class folder"},
    ]
    # A .cls member after every image, the same at every resolution.
    per_res = [_label_members(out, res) for res in (4, 8, 16)]
    assert per_res[0] == per_res[1] == per_res[2]
    assert per_res[0] == {k: str(v).encode() for k, v in FOLDER_CLASSES.items()}
    for res in (4, 16):
        assert _streamed_labels(out, res) == FOLDER_CLASSES
    # Without labels asked, the stream steps over the label members: same images, same order.
    plain, labelled = _epoch(out, 8), _epoch(out, 8, labels=True)
    assert [b["key"] for b in plain] == [b["key"] for b in labelled]
    assert all(torch.equal(a["image"], b["image"]) and "label" not in a for a, b in zip(plain, labelled))
    assert labelled[0]["label"].dtype == torch.int64
    assert verify(out, workers=1).ok

    # The same tree as a zip: the same shards.
    zipped = prepare(str(write_zip(tmp_path / "src.zip", FOLDERS)), tmp_path / "zout", labels="folders", **PREP)
    assert zipped["labels"] == m["labels"] and zipped["skipped"] == m["skipped"]
    a, b = tree_bytes(out), tree_bytes(tmp_path / "zout")
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b


# ---------------------------------------------------------------- tables

ATTRIBUTES = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Smiling", "Young"]


def test_celebahq_attribute_file_round_trip(tmp_path, capsys):
    # CelebAMask-HQ's layout: CelebA-HQ-img/<n>.jpg in the zip, CelebAMask-HQ-attribute-anno.txt
    # keyed by "<n>.jpg": a count line, the attribute names, then "0.jpg  1 -1 ...".
    images = {f"CelebA-HQ-img/{i}.jpg": _png(10 + i) for i in range(6)}  # PNG bytes, .jpg names
    src = write_zip(tmp_path / "CelebAMask-HQ.zip", images)
    rows = ["0.jpg  1 -1 1 1 -1", "1.jpg  -1 -1 -1 1 1", "2.jpg  1 1 1 1",  # 2: a field short
            "3.jpg  1 1 -1 1 1", "4.jpg  -1 -1 1 2 1",  # 4: a 2 among the chosen columns
            "7.jpg  1 1 1 1 1"]  # 5.jpg is not in the table; 7.jpg is not in the zip
    table = tmp_path / "CelebAMask-HQ-attribute-anno.txt"
    table.write_text(f"{len(rows)}\n{' '.join(ATTRIBUTES)} \n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["--src", str(src), "--out", str(out), "--max-res", "16", "--workers", "1",
                 "--no-progress", "--labels", str(table), "--label-columns", "Smiling,Young,Attractive",
                 "--verify", str(out)]) == 0
    assert "3 images written, 3 skipped" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"] == {"kind": "attributes", "names": ["Smiling", "Young", "Attractive"],
                           "counts": [3, 2, 1], "source": table.name}
    name = table.name
    assert m["skipped"] == [
        {"source": "CelebA-HQ-img/2.jpg", "reason": f"bad label row in {name}: line 5: 5 fields, expected 6"},
        {"source": "CelebA-HQ-img/4.jpg",
         "reason": f"bad label row in {name}: line 7: column 'Smiling' is '2', not 1, -1 or 0"},
        {"source": "CelebA-HQ-img/5.jpg", "reason": f"no label: not in {name}"},
    ]
    expected = {"celeba_hq_img_0": [1, 0, 1], "celeba_hq_img_1": [1, 1, 0], "celeba_hq_img_3": [1, 1, 0]}
    assert _label_members(out, 4) == {k: json.dumps(v).replace(" ", "").encode() for k, v in expected.items()}
    assert _streamed_labels(out, 8) == expected
    assert _epoch(out, 16, labels=True)[0]["label"].dtype == torch.float32


def test_csv_table_gives_classes(tmp_path):
    src = _write_tree(tmp_path / "src", {f"img/{i}.png": _png(20 + i) for i in range(5)})
    table = tmp_path / "labels.csv"
    # Keys by file name or by path below SRC; one column gives classes, in sorted order.
    table.write_text("file,species,weight\n0.png,dog,3\nimg/1.png,cat,4\n2.png,,5\n3.png,dog,1\n"
                     "4.png,ant,2\n")
    out = tmp_path / "out"
    m = prepare(str(src), out, labels=str(table), label_columns=["species"], **PREP)
    assert m["labels"] == {"kind": "class", "names": ["ant", "cat", "dog"], "counts": [1, 1, 2],
                           "source": "labels.csv, column species"}
    assert m["skipped"] == [{"source": "img/2.png",
                             "reason": "bad label row in labels.csv: line 4: no value in column 'species'"}]
    assert _streamed_labels(out, 16) == {"img_0": 2, "img_1": 1, "img_3": 2, "img_4": 0}
    # A number column: classes in numeric order.
    m = prepare(str(src), tmp_path / "w", labels=str(table), label_columns=["weight"], **PREP)
    assert m["labels"]["names"] == ["1", "2", "3", "4", "5"]
    assert _streamed_labels(tmp_path / "w", 4) == {"img_0": 2, "img_1": 3, "img_2": 4, "img_3": 0, "img_4": 1}


@pytest.mark.parametrize("table, args, says", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", [], "not a text table"),
    (b"", [], "empty"),
    (b"3\nSmiling Young\n", [], "no rows under the header"),
    (b"3\nSmiling Young\n0.jpg 1 1\n1.jpg 1 -1\n", [], "line 1 says 3 rows, the file holds 2"),
    (b"Smiling Young Old Bald\n0.jpg 1 1\n1.jpg 1 -1\n", [], "line 1: the header names 4 columns"),
    (b"file,a,a\n0.png,1,1\n", [], "'a' is there twice"),
    (b"file,species,colour\n0.png,cat,red\n", [], "column 'species' holds 'cat', not 1/-1/0"),
    (b"2\nSmiling Young\n0.jpg 1 1\n1.jpg 1 -1\n", ["--label-columns", "Smiling,young"],
     "--label-columns: no column 'young' in {table} (did you mean 'Young'?"),
])
def test_an_unusable_table_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, table, args, says):
    src = _write_tree(tmp_path / "src", {"0.jpg": _png(0), "1.jpg": _png(1)})
    path = tmp_path / "table.txt"
    path.write_bytes(table)
    out = tmp_path / "out"
    assert main(["--src", str(src), "--out", str(out), "--max-res", "16", "--no-progress",
                 "--labels", str(path), *args]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert captured.out == ""
    assert line.startswith("data_prep: error: ") and says.format(table=path) in line, line
    assert str(path) in line
    assert not out.exists()


def test_label_options_that_do_not_fit_the_source_are_refused(tmp_path, capsys):
    src = _write_tree(tmp_path / "src", {"0.jpg": _png(0)})
    cases = [
        (["--src", str(src), "--labels", "folders"], "no image of"),
        (["--src", str(src), "--labels", "shapes"], "--labels shapes: only for synthetic:N"),
        (["--src", "synthetic:4", "--labels", "folders"], "use --labels shapes"),
        (["--src", str(src), "--label-columns", "a"], "--label-columns: needs --labels FILE"),
        (["--src", str(src), "--labels", str(tmp_path / "missing.csv")], "no such file"),
    ]
    for args, says in cases:
        assert main([*args, "--out", str(tmp_path / "out"), "--max-res", "16", "--no-progress"]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert says in line, line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the synthetic set

def test_synthetic_shapes_labels_match_the_shapes_drawn(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    m = prepare("synthetic:24", out, labels="shapes", seed=5, **PREP)
    assert m["labels"]["names"] == ["disc", "square", "triangle"] and sum(m["labels"]["counts"]) == 24
    # Record what the renderer actually draws: a disc is an ellipse, the others polygons.
    drawn: list[str] = []
    ellipse, polygon = ImageDraw.ImageDraw.ellipse, ImageDraw.ImageDraw.polygon
    monkeypatch.setattr(ImageDraw.ImageDraw, "ellipse",
                        lambda self, *a, **k: (drawn.append("disc"), ellipse(self, *a, **k))[1])
    monkeypatch.setattr(ImageDraw.ImageDraw, "polygon", lambda self, xy, *a, **k: (
        drawn.append({4: "square", 3: "triangle"}[len(xy)]), polygon(self, xy, *a, **k))[1])
    first = {}
    for i in range(24):
        drawn.clear()
        render_synthetic(i, 16, 5)
        first[f"synth-{i:06d}"] = SHAPES.index(drawn[0])
    monkeypatch.undo()
    assert {k: int(v) for k, v in _label_members(out, 16).items()} == first
    assert _streamed_labels(out, 8) == first
    # Through the loader's worker processes too.
    batches = list(itertools.islice(make_loader(str(out), 8, 3, seed=0, num_workers=2, labels=True), 8))
    assert all(first[k] == int(v) for b in batches for k, v in zip(b["key"], b["label"], strict=True))
    assert len(set(first.values())) == 3
    # Asked for no labels, the set is the one it always was: same image bytes, v1, no labels.
    plain = prepare("synthetic:24", tmp_path / "plain", seed=5, **PREP)
    assert plain["version"] == 1 and "labels" not in plain and "labels" not in plain["params"]
    assert _shard_members(tmp_path / "plain", 16) == _shard_members(out, 16)[0::2]
    with pytest.raises(ValueError, match="no labels"):
        _epoch(tmp_path / "plain", 8, labels=True)


def test_synthetic_backgrounds_labels_match_the_gradient_drawn(tmp_path):
    """--labels backgrounds: each image's class is its gradient's, read back from its pixels (the
    drawn start colour is within the jitter of the class's own)."""
    out = tmp_path / "backgrounds"
    m = prepare("synthetic:32", out, labels="backgrounds", seed=3, **PREP)
    assert m["labels"]["names"] == ["night_blue", "sand", "green", "sunset"]
    assert m["labels"]["source"] == "backgrounds" and sum(m["labels"]["counts"]) == 32
    labels = {k: int(v) for k, v in _label_members(out, 16).items()}
    for i in range(32):
        start = synthetic_scene(i, 3).start
        assert np.abs(start - np.array(_BACKGROUNDS[labels[f"synth-{i:06d}"]][0])).max() <= 12.5
    assert len(set(labels.values())) == 4
    assert _streamed_labels(out, 8) == labels


def test_labelled_output_is_the_same_whatever_the_workers_and_after_an_interruption(tmp_path, monkeypatch):
    args = dict(labels="shapes", max_res=16, shard_size=4, progress=False)
    prepare("synthetic:20", tmp_path / "one", workers=1, **args)
    prepare("synthetic:20", tmp_path / "two", workers=2, **args)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")

    commit, calls = ShardSetWriter.commit, []

    def commit_twice_then_stop(self):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return commit(self)

    monkeypatch.setattr(ShardSetWriter, "commit", commit_twice_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare("synthetic:20", tmp_path / "resumed", workers=1, **args)
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    prepare("synthetic:20", tmp_path / "resumed", workers=1, **args)
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "one")
    with pytest.raises(PrepError, match="labels"):  # the unlabelled set is another preparation
        prepare("synthetic:20", tmp_path / "one", workers=1, **{**args, "labels": None})


# ---------------------------------------------------------------- verify, manifest, corrupt labels

def _rewrite_member(shard: Path, name: str, data: bytes | None) -> None:
    """Replace one member's bytes (None: drop it), keeping the others as they are."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            if info.name == name:
                if data is None:
                    continue
                payload, info.size = data, len(data)
            tar.addfile(info, io.BytesIO(payload))


def test_verify_and_the_stream_catch_broken_labels(tmp_path):
    src = _write_tree(tmp_path / "src", FOLDERS)
    good = tmp_path / "good"
    prepare(str(src), good, labels="folders", **PREP)

    def broken(name: str, data: bytes | None, res: int = 8) -> list[str]:
        out = tmp_path / "copy"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(good, out)
        _rewrite_member(out / f"{res}/shard-000000.tar", name, data)
        report = verify(out, workers=1)
        assert not report.ok
        return report.errors

    assert any("labels differ from resolution 4" in e for e in broken("cat_a.cls", b"2"))
    assert any("cat_a.cls" in e and "not a class index below 3" in e for e in broken("cat_a.cls", b"7"))
    assert any("cat_a: no .cls label member" in e for e in broken("cat_a.cls", None))
    # The stream asked for labels counts a sample whose label is unreadable as corrupt.
    batches = _epoch(tmp_path / "copy", 8, labels=True)
    assert sum(b["skipped"] for b in batches) == 1 and "cat_a" not in [b["key"][0] for b in batches]
    assert sum(b["skipped"] for b in _epoch(tmp_path / "copy", 8)) == 0

    m = json.loads((good / "manifest.json").read_text())
    assert manifest_problems(m) == []
    assert manifest_problems({**m, "labels": {**m["labels"], "kind": "colour"}}) == [
        "has labels of kind 'colour', not class or attributes"]
    assert manifest_problems({**m, "labels": {**m["labels"], "counts": [1, 2]}}) == [
        "needs labels 'counts': 3 counts >= 0, one per name"]
    assert manifest_problems({**m, "version": 1}) == [
        "has 'labels' but version 1 (labelled data sets are version 2)"]
    no_labels = {k: v for k, v in m.items() if k != "labels"}
    assert manifest_problems(no_labels) == ["has no 'labels' object (version 2 is a labelled data set)"]
    wrong_counts = {**m, "labels": {**m["labels"], "counts": [1, 1, 2]}}
    (tmp_path / "copy" / "manifest.json").write_text(json.dumps(wrong_counts))
    shutil.copytree(good / "8", tmp_path / "copy" / "8", dirs_exist_ok=True)
    assert verify(tmp_path / "copy", workers=1).errors == [
        "label counts in the shards are [0, 2, 2], the manifest says [1, 1, 2]"]
