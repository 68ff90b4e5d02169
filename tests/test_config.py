import math
import re
from pathlib import Path

import pytest

from hypersan.config import RANGES, ConfigError, config_from_dict, find_config, load_config, numeric_fields, shipped_configs


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


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/folder.toml is not here
    d = shipped_configs()
    assert d is not None and (d / "folder.toml").is_file()
    for name in ("folder", "folder.toml", "configs/folder.toml"):
        assert find_config(name) == d / "folder.toml"
    assert find_config("sweeps/glyph_warm") == d / "sweeps" / "glyph_warm.toml"
    assert load_config("folder").train.min_steps == 1000
    (tmp_path / "folder.toml").write_text("[train]\nepochs = 3\n")  # a file of the user's own wins over the name
    assert find_config("folder.toml") == Path("folder.toml")
    assert load_config("folder.toml").train.epochs == 3
    with pytest.raises(ConfigError, match=r"'fmnst' not found, here or among hypersan's configs .*nearest: fmnist"):
        find_config("fmnst")
    with pytest.raises(ConfigError, match="not found$"):  # an absolute path is taken as it is
        find_config(tmp_path / "none.toml")


def test_keep_rule_values_are_checked():
    with pytest.raises(ConfigError, match=r"generator\.keep_multiple must be >= 1"):
        config_from_dict({"generator": {"keep_multiple": 0}})
    with pytest.raises(ConfigError, match=r"generator\.min_keep must be >= 1"):
        config_from_dict({"generator": {"min_keep": 0}})
    assert config_from_dict({"generator": {"keep_multiple": 16}}).generator.keep_multiple == 16


# One valid and one invalid value (None: nothing is invalid) for every numeric field of every config section.
NUMERIC_CASES = {
    "loss.budget_over": (4.0, -1.0),
    "loss.budget_under": (0.0, -0.5),
    "loss.distill": (0.5, 1.5),
    "loss.subset_share": (1.0, 1.5),
    "loss.size_power": (0.5, -0.1),
    "loss.budget_monotone": (0.0, -1.0),  # a positive weight needs generator.budget (a cross-field check)
    "loss.budget_agree": (0.0, -1.0),  # likewise
    "generator.budget_min": (0.05, 0.0),
    "generator.budget_free_share": (0.1, 1.5),
    "data.train_limit": (100, -5),
    "data.test_limit": (100, -1),
    "data.val_size": (0, -1),
    "data.val_seed": (7, -1),
    "data.val_fraction": (0.2, 1.0),
    "data.crop_padding": (0, -1),
    "data.channels": (3, -1),
    "data.image_size": (0, -1),  # N > 0 needs data.dataset = "imagefolder" (tests/test_imagefolder.py)
    "model.widths": ([8, 8, 8], [8, 0, 8]),
    "model.blocks": ([2, 1, 1], [1, 1, 0]),
    "generator.phrasings": (1, 0),
    "generator.hidden": (1, 0),
    "generator.layers": (0, -1),
    "generator.sigma": (0.5, 0.0),
    "generator.threshold": (0.0, -0.1),
    "generator.surrogate_temp": (0.05, 0.0),
    "generator.min_keep": (4, 0),
    "generator.keep_multiple": (16, 0),
    "loss.beta": (0.0, -1.0),
    "loss.gamma": (0.0, -0.01),
    "subtasks.size_weights": ([0.0, 1.0], [1.0, -1.0]),
    "subtasks.size_tail": (0.25, -0.5),
    "subtasks.include_own": (1.0, 1.5),
    "subtasks.sets_per_batch": (0, -1),
    "subtasks.dense_share": (0.0, -0.1),
    "subtasks.holdout_fraction": (0.3, 1.01),
    "subtasks.holdout_seed": (3, -1),
    "train.seed": (3, -1),
    "train.epochs": (1, 0),
    "train.min_steps": (500, -1),
    "train.batch_size": (1, 0),
    "train.lr": (0.01, 0.0),
    "train.generator_lr": (1e-4, -1e-3),
    "train.momentum": (0.5, 1.0),
    "train.weight_decay": (0.0, -1e-4),
    "train.warmup_epochs": (0.0, -0.5),
    "train.eval_every": (0, -1),
    "train.eval_subtasks": (1, 0),
    "train.threads": (0, -1),
    "train.dist_timeout": (60.0, 0.0),
    "data.mean": ([0.5], [1.5]),
    "data.crop_scale": (0.08, 1.5),
    "data.std": ([0.25], [0.0]),
    "calib.batches": (1, 0),
    "calib.batch_size": (1, 0),
}


def _one(key, value):
    section, name = key.split(".")
    return {section: {name: value}}


def test_every_numeric_field_has_a_case():
    # a new numeric field fails here until it gets a range in RANGES and a case in NUMERIC_CASES
    assert set(numeric_fields()) == set(NUMERIC_CASES) == set(RANGES)


@pytest.mark.parametrize("key", sorted(NUMERIC_CASES))
def test_numeric_field_ranges(key):
    good, bad = NUMERIC_CASES[key]
    section, name = key.split(".")
    assert getattr(getattr(config_from_dict(_one(key, good)), section), name) == good
    if bad is not None:
        with pytest.raises(ConfigError, match=re.escape(key)) as e:
            config_from_dict(_one(key, bad))
        spec = RANGES[key][0]
        low = spec[1:spec.index(",")]
        rule = (">= " if spec[0] == "[" else "> ") + low if spec.endswith("inf)") else spec
        assert f"must {'be' if spec.endswith('inf)') else 'lie in'} {rule}" in str(e.value)  # states the range


@pytest.mark.parametrize("key", ["loss.beta", "train.lr", "subtasks.size_weights"])
def test_non_finite_floats_are_refused(key):
    value = [math.inf] if key == "subtasks.size_weights" else math.nan
    with pytest.raises(ConfigError, match=re.escape(key) + r".*finite"):
        config_from_dict(_one(key, value))


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"train\.momentum = 0.*Nesterov"):
        config_from_dict({"train": {"momentum": 0.0}})
    assert config_from_dict({"train": {"momentum": 0.0, "optimizer": "adamw"}}).train.momentum == 0.0
    with pytest.raises(ConfigError, match=r"size_weights.*positive sum"):
        config_from_dict({"subtasks": {"size_weights": [0.0, 0.0]}})
    with pytest.raises(ConfigError, match="same length"):
        config_from_dict({"model": {"widths": [8, 8], "blocks": [1]}})


def test_validation_split_fields_default_and_round_trip():
    cfg = load_config(None, ["data.val_size=0", "data.val_seed=4"])
    assert (cfg.data.val_size, cfg.data.val_seed) == (0, 4) and config_from_dict(cfg.to_dict()) == cfg
    d = load_config(None).data
    assert (d.val_split, d.val_size, d.val_fraction, d.val_seed) == ("auto", 0, 0.1, 0)  # a tenth, or val/
    with pytest.raises(ConfigError, match=r"data\.val_size must be >= 0, got -1"):
        load_config(None, ["data.val_size=-1"])


def test_config_reference_is_current():
    """docs/CONFIG.md is generated from the dataclasses: regenerate it with python tools/config_reference.py."""
    from hypersan.config import reference_markdown

    from .conftest import ROOT

    assert (ROOT / "docs" / "CONFIG.md").read_text() == reference_markdown(), \
        "docs/CONFIG.md is out of date: run python tools/config_reference.py"
    assert "| `gamma_size` | str |" in reference_markdown()


def test_error_messages_name_the_file_and_what_it_is(tmp_path):
    from hypersan.nn.checkpoint import resolve_checkpoint
    from hypersan.io import ArtifactError, write_json

    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="weights.toml: not a text file"):
        load_config(binary)
    a_file = tmp_path / "README.md"
    a_file.write_text("# notes")
    with pytest.raises(ArtifactError, match="is a file, not a checkpoint folder"):
        resolve_checkpoint(a_file)
    art = tmp_path / "art"
    art.mkdir()
    write_json(art / ".hypersan.json", {"kind": "artifact", "format": 1})
    with pytest.raises(ArtifactError, match="is a subnet artifact .* not a checkpoint: load it with"):
        resolve_checkpoint(art)
    with pytest.raises(ArtifactError, match="checkpoint folder .* not found: name a shipped model"):
        resolve_checkpoint(tmp_path / "nowhere")
