"""Config loading, overrides and validation: every bad value is one line naming the key."""

from __future__ import annotations

import json

import pytest

from gan_hr.config import ConfigError, load_config, parse_override


def test_demo_config_loads(repo_root):
    cfg = load_config(repo_root / "configs/demo.yaml")
    assert cfg.schedule.max_res == 32 and cfg.model.name == "progan"


@pytest.mark.parametrize("name", ["progan_celebahq", "stylegan_celebahq", "dcgan_celebahq64", "lsgan_celebahq64"])
def test_shipped_configs_are_valid(repo_root, name):
    # The CelebA-HQ configs point at data/celebahq, which tests do not have: drop the path.
    cfg = load_config(repo_root / f"configs/{name}.yaml", ["data.path=null"])
    assert cfg.schedule.max_res in (64, 1024)


def test_overrides_are_coerced(repo_root):
    cfg = load_config(repo_root / "configs/demo.yaml", [
        "train.max_steps=200", "schedule.lr=1e-3", "model.name=stylegan", "data.mirror=false",
        "schedule.batch_by_res.16=32", "train.metrics=[swd]", "train.ema_rampup=0.05", "train.final_swd=false",
    ])
    assert cfg.train.max_steps == 200
    assert cfg.schedule.lr == pytest.approx(1e-3)
    assert cfg.model.name == "stylegan"
    assert cfg.data.mirror is False
    assert cfg.schedule.batch_by_res == {16: 32}
    assert cfg.train.metrics == ["swd"]
    assert cfg.train.ema_rampup == 0.05
    assert cfg.train.final_swd is False and load_config(repo_root / "configs/demo.yaml").train.final_swd is True


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("0", 0), ("4", 4)])
def test_num_workers_is_auto_or_a_count(repo_root, value, expected):
    cfg = load_config(repo_root / "configs/demo.yaml", [f"data.num_workers={value}"])
    assert cfg.data.num_workers == expected


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.max_steps")


@pytest.mark.parametrize("override, key, fragment", [
    ("train.max_stepz=3", "train.max_stepz", "did you mean train.max_steps"),
    ("trian.seed=1", "trian", "did you mean train"),
    ("train.max_steps=abc", "train.max_steps", "expected an integer"),
    ("train.max_steps=1.5", "train.max_steps", "expected an integer"),
    ("schedule.lr=fast", "schedule.lr", "expected a number"),
    ("data.mirror=3", "data.mirror", "expected true or false"),
    ("data.synthetic_labels=colours", "data.synthetic_labels", "must be one of shapes, backgrounds"),
    ("schedule.max_res=48", "schedule.max_res", "power of two"),
    ("schedule.start_res=64", "schedule.start_res", "must not exceed"),
    ("schedule.batch_size=0", "schedule.batch_size", "must be positive"),
    ("schedule.lr=-0.1", "schedule.lr", "must be positive"),
    ("schedule.batch_by_res.12=8", "schedule.batch_by_res.12", "power of two"),
    ("model.name=biggan", "model.name", "must be one of"),
    ("loss.name=hinge", "loss.name", "must be one of"),
    ("train.mixed_precision=fp8", "train.mixed_precision", "must be one of"),
    ("train.metrics=[swd,is]", "train.metrics[1]", "must be one of"),
    ("train.final_swd=maybe", "train.final_swd", "expected true or false, got 'maybe'"),
    ("train.final_swd=1", "train.final_swd", "expected true or false, got 1"),
    ("model.d_spectral_norm=yes please", "model.d_spectral_norm", "expected true or false, got 'yes please'"),
    ("data.path=/no/such/dir", "data.path", "no such directory"),
    ("tracking.backend=tensorboard", "tracking.backend", "must be one of"),
    ("data.num_workers=-1", "data.num_workers", "must be auto or one of 0, 1, 2, 4, 8, 16 (a divisor of the data "
                                                "stream's 16 slots per process), got -1"),
    ("data.num_workers=3", "data.num_workers", "must be auto or one of 0, 1, 2, 4, 8, 16 (a divisor of the data "
                                               "stream's 16 slots per process), got 3"),
    ("data.num_workers=many", "data.num_workers", "must be auto or one of 0, 1, 2, 4, 8, 16 (a divisor of the "
                                                  "data stream's 16 slots per process), got 'many'"),
])
def test_bad_values_name_the_key(repo_root, override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "configs/demo.yaml", [override])
    message = str(err.value)
    assert message.startswith(key + ":"), message
    assert fragment in message
    assert "\n" not in message


def test_data_path_without_manifest(tmp_path, repo_root):
    with pytest.raises(ConfigError, match="^data.path: no manifest.json"):
        load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}"])


def _write_manifest(root, shards: dict) -> None:
    manifest = {"format": "gan_hr-shards", "version": 1, "num_images": 16, "resolutions": [int(r) for r in shards],
                "image_format": "png", "shards": shards, "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _shards(*resolutions: int) -> dict:
    return {str(r): [{"path": f"{r}/shard-000000.tar", "count": 16}] for r in resolutions}


def test_max_res_above_the_data(tmp_path, repo_root):
    _write_manifest(tmp_path, _shards(4, 8, 16))
    with pytest.raises(ConfigError, match=r"^schedule.max_res: 32 is above the data's largest resolution \(16\)"):
        load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}"])
    cfg = load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}", "schedule.max_res=16"])
    assert cfg.data.path == str(tmp_path)


@pytest.mark.parametrize("shards, fragment", [
    ({}, "lists no shards: the data set holds no images"),
    ({"4": [], "8": [], "16": []}, "lists no shards: the data set holds no images"),
    ({**_shards(4, 8), "16": []}, "lists no shards at 16x16, which the schedule trains"),
    (_shards(4, 16), "lists no shards at 8x8, which the schedule trains"),
    ({**_shards(4, 8), "16": [{"path": "16/shard-000000.tar", "count": 0}]},
     "lists a shard at 16x16 without a path and a count >= 1"),
    ({**_shards(4, 8), "16": [{"count": 3}]}, "lists a shard at 16x16 without a path and a count >= 1"),
    ({**_shards(4, 8), "16": [{"path": "16/shard-000000.tar", "count": 15}]},
     "has 15 images at 16x16; training needs at least 16 per process (the data stream's slots)"),
])
def test_data_without_images_at_a_trained_resolution_is_refused(tmp_path, repo_root, shards, fragment):
    _write_manifest(tmp_path, shards)
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "configs/demo.yaml",
                    [f"data.path={tmp_path}", "schedule.start_res=4", "schedule.max_res=16"])
    message = str(err.value)
    assert message.startswith(f"data.path: {tmp_path / 'manifest.json'}") and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "{", "null", "[]", '{"shards": []}', '{"shards": {"x": []}}', '{"format": 1}'])
def test_garbled_manifest_is_one_line(tmp_path, repo_root, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}"])
    assert str(err.value).startswith(f"data.path: {tmp_path / 'manifest.json'} is not ")
    assert "\n" not in str(err.value)


def test_only_the_trained_resolutions_need_shards(tmp_path, repo_root):
    _write_manifest(tmp_path, {**_shards(8, 16), "4": []})
    cfg = load_config(repo_root / "configs/demo.yaml",
                      [f"data.path={tmp_path}", "schedule.start_res=8", "schedule.max_res=16"])
    assert cfg.schedule.start_res == 8


def test_unknown_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  name: progan\n")
    with pytest.raises(ConfigError, match=r"^modle: unknown key \(did you mean model\?\)"):
        load_config(path)


def test_the_built_in_label_kinds_are_the_ones_data_prep_makes():
    """data.synthetic_labels is validated against gan_hr's list; data_prep makes the labels: the
    two lists must name the same kinds, or a valid config would fail in data_prep."""
    from data_prep.labels import SYNTHETIC_LABELS as made

    from gan_hr.config import SYNTHETIC_LABELS as accepted

    assert list(accepted) == list(made)
