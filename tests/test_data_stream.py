"""The shard stream: rank/worker split, coverage, exact resume, corrupt members, determinism."""

from __future__ import annotations

import io
import itertools
import json
import logging
import multiprocessing
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import gan_hr.data as data
from gan_hr.config import ConfigError, load_config
from gan_hr.data import (
    DataError,
    ShardInfo,
    ShardStream,
    data_url,
    load_manifest,
    make_loader,
    resolution_shards,
    to_float,
)

RES = 8


def _image_bytes(index: int, fmt: str = "png", res: int = RES) -> bytes:
    """An image that encodes its index (channels 0, 1) and is not mirror-symmetric (channel 2)."""
    pixels = np.zeros((res, res, 3), np.uint8)
    pixels[..., 0] = index % 256
    pixels[..., 1] = index // 256
    pixels[:, res // 2 :, 2] = 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return out.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]], tar_format=tarfile.PAX_FORMAT) -> None:
    with tarfile.open(path, "w", format=tar_format) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def write_dataset(
    root: Path,
    counts: list[int],
    *,
    fmt: str = "png",
    bad: dict[tuple[int, int], bytes] | None = None,
    key_prefix: str = "img",
    tar_format=tarfile.PAX_FORMAT,
) -> list[ShardInfo]:
    """Shards in data_prep's format at resolution RES (plus a manifest); sample i has key
    f"{key_prefix}-{i:05d}". `bad` replaces (shard, member) payloads with broken ones."""
    bad = bad or {}
    (root / str(RES)).mkdir(parents=True, exist_ok=True)
    entries, index = [], 0
    for shard, count in enumerate(counts):
        members = []
        for member in range(count):
            payload = bad.get((shard, member)) or _image_bytes(index, fmt)
            members.append((f"{key_prefix}-{index:05d}.{fmt}", payload))
            index += 1
        rel = f"{RES}/shard-{shard:06d}.tar"
        _write_tar(root / rel, members, tar_format)
        entries.append({"path": rel, "count": count})
    manifest = {
        "format": "gan_hr-shards", "version": 1, "num_images": index, "resolutions": [RES],
        "image_format": fmt, "shard_size": max(counts), "shards": {str(RES): entries},
        "skipped": [], "source": "test", "seed": 0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return resolution_shards(manifest, str(root), RES)


def all_keys(counts: list[int], key_prefix: str = "img") -> set[str]:
    return {f"{key_prefix}-{i:05d}" for i in range(sum(counts))}


def take(shards, n: int, num_workers: int = 0, **kwargs) -> list[dict]:
    """The first n batches of one rank's stream, through a real DataLoader with `num_workers`.
    Unless given, the rank has as many slots as workers (one with none), which the epoch
    arithmetic of the tests below counts on."""
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("slots", max(num_workers, 1))
    stream = ShardStream(shards, resolution=RES, **kwargs)
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    return list(itertools.islice(loader, n))


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        assert torch.equal(x["image"], y["image"])
        assert x["skipped"] == y["skipped"]


def test_ranks_and_workers_split_each_epoch_disjointly(tmp_path):
    # 8 shards of 4 over 2 ranks x 2 workers: each slot reads 2 shards (8 images, 2 batches)
    # per epoch, so each rank's first 4 batches are its half of epoch 0, the next 4 of epoch 1.
    counts = [4] * 8
    shards = write_dataset(tmp_path, counts)
    per_rank = [take(shards, 8, batch_size=4, rank=r, world_size=2, num_workers=2) for r in (0, 1)]
    for epoch in (0, 1):
        keys = [k for batches in per_rank for k in keys_of(batches[4 * epoch : 4 * epoch + 4])]
        assert len(keys) == len(set(keys)) == 32
        assert set(keys) == all_keys(counts)
    # Reshuffled each epoch: shards move between ranks, not only samples within shards.
    assert set(keys_of(per_rank[0][:4])) != set(keys_of(per_rank[0][4:]))
    batch = per_rank[0][0]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, RES, RES)
    for key, image in zip(batch["key"], batch["image"]):  # each image is its key's member
        assert int(image[0, 0, 0]) + 256 * int(image[1, 0, 0]) == int(key.split("-")[1])


def test_fewer_shards_than_slots_still_covers_and_never_starves(tmp_path):
    counts = [6, 6]  # 2 shards, 4 slots: every slot reads both shards, takes every 4th sample
    shards = write_dataset(tmp_path, counts)
    per_rank = [take(shards, 20, batch_size=3, rank=r, world_size=2, num_workers=2) for r in (0, 1)]
    epoch0 = [k for batches in per_rank for k in keys_of(batches[:2])]
    assert len(epoch0) == len(set(epoch0)) == 12 and set(epoch0) == all_keys(counts)
    assert all(len(b["key"]) == 3 for batches in per_rank for b in batches)


def test_uneven_shards_never_stop_a_rank(tmp_path):
    # Rank 0's slot gets far fewer images per epoch than rank 1's in some epochs; both run on.
    counts = [9, 1, 1, 1, 1]
    shards = write_dataset(tmp_path, counts)
    for rank in (0, 1):
        batches = take(shards, 30, batch_size=2, rank=rank, world_size=2, num_workers=0)
        assert len(batches) == 30
        assert set(keys_of(batches)) <= all_keys(counts)


@pytest.mark.parametrize(
    "num_workers, mirror, batch_size, start",
    [
        (0, False, 3, 5),  # mid-shard, mid-epoch
        (2, False, 3, 7),  # mid-shard, worker 1 resumes first
        (2, True, 4, 4),  # exactly at an epoch boundary, mirrored
        (2, True, 3, 9),
    ],
)
def test_resume_continues_exactly(tmp_path, num_workers, mirror, batch_size, start):
    shards = write_dataset(tmp_path, [4] * 8)
    common = dict(
        batch_size=batch_size, rank=1, world_size=2, num_workers=num_workers, mirror=mirror
    )
    straight = take(shards, start + 6, **common)
    resumed = take(shards, 6, start_batch=start, **common)
    assert_same_batches(straight[start:], resumed)


def test_a_worker_hands_over_the_batches_it_would_make_in_process(tmp_path):
    # The same batches, in the same layout, whichever process decodes them.
    shards = write_dataset(tmp_path, [5, 7])
    common = dict(batch_size=3, num_workers=1, mirror=True)
    in_process = list(itertools.islice(ShardStream(shards, resolution=RES, seed=0, batch_size=3, mirror=True,
                                                   slots=1), 6))
    through_worker = take(shards, 6, **common)
    assert_same_batches(in_process, through_worker)
    assert all(b["image"].is_contiguous(memory_format=torch.channels_last) for b in through_worker)


def test_resume_decodes_only_what_it_yields(tmp_path, monkeypatch):
    shards = write_dataset(tmp_path, [5, 7, 6])
    decoded = []
    real = data._decode_image

    def counting(*args):
        decoded.append(1)
        return real(*args)

    monkeypatch.setattr(data, "_decode_image", counting)
    stream = ShardStream(shards, batch_size=2, resolution=RES, seed=3, start_batch=20)
    assert len(list(itertools.islice(stream, 3))) == 3
    assert len(decoded) == 6  # 20 batches = two epochs and more skipped without a decode


def test_mirror_flips_about_half_and_only_horizontally(tmp_path):
    counts = [16] * 4
    shards = write_dataset(tmp_path, counts)
    batches = take(shards, 4, batch_size=16, num_workers=0, mirror=True)
    flipped = [bool(img[2, 0, 0] == 255) for b in batches for img in b["image"]]
    assert 16 < sum(flipped) < 48
    plain = take(shards, 4, batch_size=16, num_workers=0, mirror=False)
    assert keys_of(plain) == keys_of(batches)  # flipping never changes the order
    for a, b in zip(plain, batches):
        for x, y, f in zip(a["image"], b["image"], [bool(i[2, 0, 0] == 255) for i in b["image"]]):
            assert torch.equal(y, x.flip(-1) if f else x)


def test_corrupt_members_are_skipped_counted_and_resume_stays_exact(tmp_path, caplog):
    counts = [5, 5, 5]
    wrong_size = _image_bytes(0, res=2 * RES)
    shards = write_dataset(tmp_path, counts, bad={(1, 2): np.random.bytes(300), (2, 4): wrong_size})
    with caplog.at_level(logging.WARNING, logger="gan_hr.data"):
        batches = take(shards, 7, batch_size=3, num_workers=0)  # 5 batches = epoch 0's positions
    assert sum(b["skipped"] for b in batches[:5]) == 2
    assert "corrupt" in caplog.text
    assert all(b["image"].shape == (3, 3, RES, RES) for b in batches)
    # A batch holds its own positions' good samples, then the next good ones after them.
    own = [b["key"][: 3 - b["skipped"]] for b in batches]
    good_keys = all_keys(counts) - {"img-00007", "img-00014"}
    assert sorted(k for keys in own[:5] for k in keys) == sorted(good_keys)
    for i, b in enumerate(batches[:5]):
        if b["skipped"]:
            later = [k for keys in own[i + 1 :] for k in keys]
            assert b["key"][3 - b["skipped"] :] == later[: b["skipped"]]
    for start in range(1, 5):
        resumed = take(shards, 7 - start, batch_size=3, num_workers=0, start_batch=start)
        assert_same_batches(batches[start:], resumed)


def test_all_corrupt_data_fails_loudly(tmp_path):
    shards = write_dataset(tmp_path, [3], bad={(0, i): b"junk" for i in range(3)})
    with pytest.raises(DataError, match=f"more than 3 corrupt samples in a row at {RES}x{RES}"):
        take(shards, 1, batch_size=1, num_workers=0)


def test_a_missing_shard_fails_when_the_loader_is_built(tmp_path):
    write_dataset(tmp_path, [8, 8, 8])
    (tmp_path / "8" / "shard-000001.tar").unlink()
    with pytest.raises(DataError) as err:
        make_loader(str(tmp_path), RES, 2, seed=0, num_workers=2)
    assert str(err.value) == (f"shard {tmp_path}/8/shard-000001.tar is missing or unreadable "
                              "(FileNotFoundError: No such file or directory)")
    assert not multiprocessing.active_children()


@pytest.mark.filterwarnings("ignore:.*pin_memory")  # pinning without a GPU
@pytest.mark.parametrize("num_workers, pin_memory", [(0, False), (2, False), (2, True)])
def test_a_shard_lost_mid_stream_is_one_line_and_stops_the_workers(tmp_path, num_workers, pin_memory):
    """A shard deleted after the phase started: the error names it and, while it is still alive,
    no worker is left (one left for exit would hang it: the workers ignore SIGTERM)."""
    write_dataset(tmp_path, [8, 8, 8])  # at least one image per slot
    loader = make_loader(str(tmp_path), RES, 2, seed=0, num_workers=num_workers, pin_memory=pin_memory)
    for shard in (tmp_path / "8").iterdir():
        shard.unlink()
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert re.fullmatch(rf"shard {re.escape(str(tmp_path))}/8/shard-00000[0-2]\.tar is missing or unreadable "
                        r"\(FileNotFoundError: No such file or directory\)", str(err.value)), str(err.value)
    assert not multiprocessing.active_children()


def test_same_seed_same_stream_other_seed_other_order(tmp_path):
    shards = write_dataset(tmp_path, [6] * 6)
    a = take(shards, 6, batch_size=4, seed=1, num_workers=2, mirror=True)
    b = take(shards, 6, batch_size=4, seed=1, num_workers=2, mirror=True)
    c = take(shards, 6, batch_size=4, seed=2, num_workers=2, mirror=True)
    assert_same_batches(a, b)
    assert keys_of(a) != keys_of(c)


def test_long_keys_and_jpeg_members(tmp_path):
    prefix = "k" * 150  # past the 100-byte ustar name: pax and GNU long-name records
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        root = tmp_path / str(tar_format)
        shards = write_dataset(root, [3, 3], fmt="jpg", key_prefix=prefix, tar_format=tar_format)
        batches = take(shards, 3, batch_size=2, num_workers=0)
        assert set(keys_of(batches)) == all_keys([3, 3], prefix)
        assert all(b["skipped"] == 0 for b in batches)
        image = batches[0]["image"][0]
        assert abs(int(image[0, 0, 0]) - int(batches[0]["key"][0][-5:])) <= 3  # JPEG is lossy


def test_make_loader_reads_local_and_pipe_roots(tmp_path):
    shards = write_dataset(tmp_path, [8, 8, 8])  # at least one image for each of the rank's 16 slots
    assert load_manifest(str(tmp_path))["num_images"] == 24
    local = list(itertools.islice(make_loader(str(tmp_path), RES, 2, seed=0, num_workers=2), 4))
    piped = make_loader(f"pipe:cat {tmp_path}/{{path}}", RES, 2, seed=0, num_workers=2)
    assert_same_batches(local, list(itertools.islice(piped, 4)))
    # Without {path}, the path follows the last word that ends in "/".
    appended = make_loader(f"pipe:cat {tmp_path}/", RES, 2, seed=0, num_workers=2)
    assert_same_batches(local, list(itertools.islice(appended, 4)))
    assert shards[0].url == str(tmp_path / "8" / "shard-000000.tar")
    with pytest.raises(ValueError, match="no resolution"):
        make_loader(str(tmp_path), 16, 2, seed=0)


def test_make_loader_serves_the_stream_in_order_and_shuts_its_workers_down(tmp_path):
    shards = write_dataset(tmp_path, [4] * 16)
    batches = iter(make_loader(str(tmp_path), RES, 2, seed=0, num_workers=2))
    assert_same_batches(list(itertools.islice(batches, 8)), take(shards, 8, batch_size=2, slots=16))
    del batches
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("start", [0, 5, 16, 23])
def test_the_worker_count_never_changes_the_batches(tmp_path, start):
    """The order belongs to the stream: 0, 1, 2 or 4 workers over 4 slots give the same batches,
    from the start and resumed at any batch, also across an epoch (4 slots x 3 batches)."""
    shards = write_dataset(tmp_path, [3, 5, 4, 6, 6])
    common = dict(batch_size=2, rank=1, world_size=2, mirror=True, slots=4)
    reference = take(shards, start + 8, num_workers=0, **common)[start:]
    for workers in (1, 2, 4):
        assert_same_batches(take(shards, 8, num_workers=workers, start_batch=start, **common), reference)


def test_manifest_paths_must_be_safe(tmp_path):
    manifest = {"resolutions": [8], "shards": {"8": [{"path": "8/x.tar; rm -rf ~", "count": 1}]}}
    with pytest.raises(ValueError, match="unsafe"):
        resolution_shards(manifest, "pipe:cat /data/{path}", 8)
    manifest["shards"]["8"][0]["path"] = "../x.tar"
    with pytest.raises(ValueError, match="unsafe"):
        resolution_shards(manifest, str(tmp_path), 8)


def test_a_worker_count_that_does_not_divide_the_slots_is_refused(tmp_path):
    shards = write_dataset(tmp_path, [4, 4])
    with pytest.raises(ValueError, match="3 loader workers cannot share 4 slots in order"):
        take(shards, 1, num_workers=3, batch_size=2, slots=4)


def test_to_float_maps_to_minus_one_one():
    images = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = to_float(images)
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0])
    with pytest.raises(TypeError):
        to_float(out)
    batch = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = batch.to(memory_format=torch.channels_last)
    converted = to_float(batch)  # the stream's layout in, the usual contiguous layout out
    assert converted.is_contiguous()
    assert torch.equal(converted, batch.contiguous().float() / 127.5 - 1)


def test_reads_data_prep_output(tmp_path):
    data_prep = pytest.importorskip("data_prep")
    data_prep.prepare("synthetic:16", tmp_path, max_res=8, shard_size=4, workers=1, progress=False)
    per_res = {}
    for res in (4, 8):
        loader = make_loader(str(tmp_path), res, 1, seed=0, num_workers=2, mirror=True)
        per_res[res] = list(itertools.islice(loader, 16))  # 16 slots of one image: one epoch
        keys = keys_of(per_res[res])
        assert len(set(keys)) == 16 and all(k.startswith("synth-") for k in keys)
        assert per_res[res][0]["image"].shape == (1, 3, res, res)
    # Shard i holds the same images at every resolution, so every resolution sees one order.
    assert keys_of(per_res[4]) == keys_of(per_res[8])


def test_a_pipe_root_says_where_its_paths_go():
    assert data_url("pipe:aws s3 cp s3://b/celebahq/ -", "64/shard-000000.tar") == (
        "pipe:aws s3 cp s3://b/celebahq/64/shard-000000.tar -")
    # A webdataset shard list is answered with the root to write, in one line.
    with pytest.raises(ValueError) as err:
        load_manifest("pipe:aws s3 cp s3://b/celebahq/64/shard-{000000..000099}.tar -")
    assert "\n" not in str(err.value)
    assert str(err.value).endswith(
        "is a brace-expanded shard list, but a gan_hr data set is a root whose manifest.json "
        "lists the shards (python -m data_prep writes it): write 'pipe:aws s3 cp s3://b/celebahq/{path} -'")
    with pytest.raises(ValueError, match="brace-expanded.*write 'https://h/celebahq/'$"):
        data_url("https://h/celebahq/64/shard-{000000..000009}.tar", "manifest.json")
    with pytest.raises(ValueError, match=r"cannot tell where .* 'pipe:aws s3 cp s3://bucket/celebahq/\{path\} -'$"):
        data_url("pipe:cat data", "manifest.json")


@pytest.mark.parametrize("root, says", [
    ("pipe:cat data", "cannot tell where"),
    ("pipe:cat /d/64/shard-{000000..000003}.tar", "brace-expanded shard list"),
])
def test_the_config_refuses_a_pipe_root_it_cannot_place_paths_in(repo_root, root, says):
    with pytest.raises(ConfigError, match=f"^data.path: .*{says}"):
        load_config(repo_root / "configs/demo.yaml", [f"data.path={root}"])
