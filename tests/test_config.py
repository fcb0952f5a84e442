from pathlib import Path

import pytest

from texocr.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_overrides,
    save_config,
)

CONFIGS = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml")
                 if p.parent.name != "accelerate")  # configs/accelerate/ holds `accelerate launch` configs


def test_configs_exist():
    assert CONFIGS, "configs/ holds no YAML files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # every shipped config opens with the command that runs it
    assert path.read_text().lstrip().startswith("# texocr "), f"{path} must open with '# texocr ...'"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_key_names_valid_choices():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lrr": 1e-3}})
    msg = str(e.value)
    assert "train.lrr" in msg and "train.lr" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        config_from_dict({"trian": {}})


def test_wrong_type_and_bad_choice():
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        config_from_dict({"train": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"model.method: 'lorra' is not one of 'lora', 'qlora', 'full'"):
        config_from_dict({"model": {"method": "lorra"}})
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        config_from_dict({"train": {"batch_size": True}})


def test_overrides_parse_and_apply(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  batch_size: 4\nmodel:\n  method: lora\n")
    cfg = load_config(f, ["--train.lr", "1e-4", "--model.method=full", "--data.train", "a/b", "--train.max-steps", "7"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.batch_size == 4  # untouched keys keep the file's value
    assert cfg.model.method == "full"
    assert cfg.data.train == ["a/b"]
    assert cfg.train.max_steps == 7
    assert isinstance(cfg.train.lr, float)


def test_override_errors():
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--train.lr"])
    with pytest.raises(ConfigError, match="overrides look like"):
        parse_overrides(["lr=3"])
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_config(None, ["--train.nope", "1"])


def test_optional_and_list_fields():
    cfg = config_from_dict({"model": {"adapter": None, "lora_target_modules": ["q_proj", "v_proj"]}})
    assert cfg.model.adapter is None
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError):
        config_from_dict({"model": {"lora_target_modules": {"a": 1}}})


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
