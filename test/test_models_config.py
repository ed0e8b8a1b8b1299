import json
import shutil

import pytest
from models_fixtures import one_torch_thread  # noqa: F401

from models.config import ConfigError, PolicyConfig, config_search_dirs, load_model_config


def test_named_configs_load_with_design_numbers():
    tiny = load_model_config("tiny")
    big = load_model_config("qwen2_5_vl_3b")
    assert tiny.name == "tiny" and tiny.vlm.model_name_or_path == "builtin:tiny"
    assert big.vlm.hidden_size == 2048 and big.vlm.num_views == 5
    assert (big.vlm.image_width, big.vlm.image_height) == (640, 360)
    assert (big.lora.r, big.lora.alpha, big.lora.dropout) == (16, 32, 0.05)
    assert big.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (big.sensor.window, big.sensor.channels) == (65, 1026)
    assert (big.action_expert.horizon, big.action_expert.action_dim) == (8, 7)
    assert big.vlm_reuse_count == 17
    text = big.vlm.architecture["text_config"]
    vision = big.vlm.architecture["vision_config"]
    assert (text["num_hidden_layers"], text["num_attention_heads"]) == (36, 16)
    assert text["num_key_value_heads"] == 2
    assert (text["intermediate_size"], text["vocab_size"]) == (11008, 151936)
    assert (vision["depth"], vision["hidden_size"], vision["out_hidden_size"]) == (32, 1280, 2048)
    assert vision["fullatt_block_indexes"] == [7, 15, 23, 31]


def test_round_trip_through_json():
    cfg = load_model_config("qwen2_5_vl_3b")
    again = PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"bogus": 1}, "bogus"),
        ({"vlm": {"max_pixelz": 3}}, "vlm.max_pixelz"),
        ({"action_expert": {"layers": 3}}, "action_expert.layers"),
    ],
)
def test_unknown_keys_are_rejected_by_name(patch, key):
    data = PolicyConfig().to_dict()
    for section, value in patch.items():
        if isinstance(value, dict):
            data[section].update(value)
        else:
            data[section] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PolicyConfig.from_dict(data)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("vlm", "token_selection", "some"),
        ("vlm", "dtype", "int8"),
        ("action_expert", "head", "diffusion"),
        ("sensor", "window", "65"),
        ("sensor", "force_channels", 1026),
        ("lora", "enabled", "yes"),
    ],
)
def test_bad_values_are_rejected(section, key, value):
    data = PolicyConfig().to_dict()
    data[section][key] = value
    with pytest.raises(ConfigError, match=key):
        PolicyConfig.from_dict(data)


def test_missing_keys_take_defaults():
    cfg = PolicyConfig.from_dict({"action_expert": {"head": "flow"}})
    assert cfg.action_expert.head == "flow" and cfg.sensor.window == 65


def test_search_order_and_paths(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "config" / "models").mkdir(parents=True)
    data = load_model_config("tiny").to_dict()
    data["name"] = "from_env_root"
    import yaml

    (root / "config" / "models" / "tiny.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("INSERTION_VLA_ROOT", str(root))
    assert config_search_dirs()[0] == root / "config" / "models"
    assert load_model_config("tiny").name == "from_env_root"
    copy = tmp_path / "mine.yaml"
    shutil.copy(root / "config" / "models" / "tiny.yaml", copy)
    assert load_model_config(copy).name == "from_env_root"
    with pytest.raises(FileNotFoundError, match="no model config named 'nope'"):
        load_model_config("nope")


def test_yaml_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("vlm:\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*vlm\.colour"):
        load_model_config(path)
