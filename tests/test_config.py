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
        "schedule.batch_by_res.16=32", "train.metrics=[swd]", "train.ema_rampup=0.05",
    ])
    assert cfg.train.max_steps == 200
    assert cfg.schedule.lr == pytest.approx(1e-3)
    assert cfg.model.name == "stylegan"
    assert cfg.data.mirror is False
    assert cfg.schedule.batch_by_res == {16: 32}
    assert cfg.train.metrics == ["swd"]
    assert cfg.train.ema_rampup == 0.05


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
    ("schedule.max_res=48", "schedule.max_res", "power of two"),
    ("schedule.start_res=64", "schedule.start_res", "must not exceed"),
    ("schedule.batch_size=0", "schedule.batch_size", "must be positive"),
    ("schedule.lr=-0.1", "schedule.lr", "must be positive"),
    ("schedule.batch_by_res.12=8", "schedule.batch_by_res.12", "power of two"),
    ("model.name=biggan", "model.name", "must be one of"),
    ("loss.name=hinge", "loss.name", "must be one of"),
    ("train.mixed_precision=fp8", "train.mixed_precision", "must be one of"),
    ("train.metrics=[swd,is]", "train.metrics[1]", "must be one of"),
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


def test_max_res_above_the_data(tmp_path, repo_root):
    (tmp_path / "manifest.json").write_text(json.dumps({"resolutions": [4, 8, 16]}))
    with pytest.raises(ConfigError, match=r"^schedule.max_res: 32 is above the data's largest resolution \(16\)"):
        load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}"])
    cfg = load_config(repo_root / "configs/demo.yaml", [f"data.path={tmp_path}", "schedule.max_res=16"])
    assert cfg.data.path == str(tmp_path)


def test_unknown_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  name: progan\n")
    with pytest.raises(ConfigError, match=r"^modle: unknown key \(did you mean model\?\)"):
        load_config(path)
