import pytest

from hypersan.config import ConfigError, config_from_dict, load_config


def test_unknown_key_is_a_clear_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key.*train\.epochz.*allowed.*epochs"):
        load_config(p)


def test_unknown_section_and_wrong_type():
    with pytest.raises(ConfigError, match="trian"):
        config_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got str"):
        config_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"model\.arch = 'mlp'"):
        config_from_dict({"model": {"arch": "mlp"}})


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.widths=[4, 8]", "model.blocks=[1,1]", "data.dataset=cifar10"])
    assert cfg.train.epochs == 3 and cfg.model.widths == [4, 8] and cfg.data.dataset == "cifar10"
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["epochs"])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.toml")


def test_keep_rule_values_are_checked():
    with pytest.raises(ConfigError, match=r"generator\.keep_multiple must be >= 1"):
        config_from_dict({"generator": {"keep_multiple": 0}})
    with pytest.raises(ConfigError, match=r"generator\.min_keep must be >= 1"):
        config_from_dict({"generator": {"min_keep": 0}})
    assert config_from_dict({"generator": {"keep_multiple": 16}}).generator.keep_multiple == 16
