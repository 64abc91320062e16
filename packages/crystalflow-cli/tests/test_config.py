"""Run configuration: presets (paper values), TOML/YAML files, --set overrides, clear errors."""

import json

import pytest
import yaml
from crystalflow.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    list_presets,
    load_config,
)

# Values written from reference-facts sections 2-6 (not from our code).
PAPER = {
    "perov5-csp": ("csp", 3000, 1024),
    "mp20-csp": ("csp", 3000, 256),
    "mpts52-csp": ("csp", 500, 128),
    "carbon24-csp": ("csp", 4000, 256),
    "mp20-dng": ("dng", 3000, 1024),  # 256 per GPU x 4 GPUs
    "perov5-dng": ("dng", 3000, 1024),
    "mpts52-dng": ("dng", 500, 128),
    "carbon24-dng": ("dng", 4000, 256),
}


def test_every_preset_validates_and_has_a_description():
    presets = list_presets()
    for name in [*PAPER, "tiny", "small", "mp20-dng-eform", "calypso60-csp-pressure"]:
        assert name in presets and presets[name]
        cfg = load_config(name)
        assert cfg.preset == name


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_carry_the_reference_hyperparameters(name):
    mode, epochs, batch = PAPER[name]
    cfg = load_config(name)
    m, t = cfg.model, cfg.train
    assert (m.mode, t.epochs, t.batch_size) == (mode, epochs, batch)
    assert (m.hidden, m.num_layers, m.time_dim, m.num_freqs, m.num_millers) == (512, 6, 256, 256, 8)
    assert m.lattice_sigma == 0.1
    assert (m.lambda_k, m.lambda_F) == (1.0, 10.0)
    if mode == "dng":
        assert m.lambda_A == 10.0
    assert (t.optimizer, t.lr, t.betas, t.eps, t.weight_decay) == (
        "adam",
        1e-3,
        (0.9, 0.999),
        1e-8,
        0,
    )
    assert (t.scheduler, t.plateau_factor, t.plateau_patience, t.plateau_every, t.min_lr) == (
        "plateau",
        0.6,
        30,
        5,
        1e-4,
    )
    assert t.clip_value == 0.5 and t.clip_norm is None
    assert t.seed == 42
    assert m.cond_drop_prob == 0.0 and m.time_sampler == "uniform"


def test_conditional_presets():
    assert load_config("mp20-dng-eform").model.conditions == ["formation_energy_per_atom"]
    cfg = load_config("calypso60-csp-pressure")
    assert cfg.model.conditions == ["pressure"] and cfg.train.epochs == 2000
    assert cfg.train.batch_size == 256 and cfg.model.max_atoms == 60


def test_defaults_are_the_reference_values():
    m, t = ModelConfig(), TrainConfig()
    assert (m.lattice_sigma, m.lambda_k, m.lambda_F, m.lambda_A) == (0.1, 1.0, 10.0, 10.0)
    assert (t.lr, t.clip_value, t.plateau_factor, t.plateau_patience) == (1e-3, 0.5, 0.6, 30)


def test_tiny_preset_is_a_few_hundred_thousand_parameters():
    from crystalflow.model import CrystalFlow

    n = sum(p.numel() for p in CrystalFlow(load_config("tiny").model).parameters())
    assert 1e5 < n < 1e6


def test_precedence_preset_then_file_then_set(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nlr = 5e-4\nbatch_size = 7\n[model]\nhidden = 32\n")
    cfg = load_config("tiny", toml, ["train.batch_size=9", "model.conditions=[pressure, band_gap]"])
    assert cfg.train.lr == 5e-4  # file over preset
    assert cfg.train.batch_size == 9  # --set over file
    assert cfg.model.hidden == 32
    assert cfg.model.num_layers == 3  # from the preset
    assert cfg.model.conditions == ["pressure", "band_gap"]


def test_yaml_config_file_and_saved_config_round_trip(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(
        yaml.safe_dump({"model": {"mode": "dng", "max_atoms": 12}, "train": {"epochs": 3}})
    )
    cfg = load_config(config_file=y, overrides=["train.max_steps=none", "train.betas=[0.8, 0.99]"])
    assert cfg.model.mode == "dng" and cfg.train.epochs == 3 and cfg.train.max_steps is None
    assert cfg.train.betas == (0.8, 0.99)
    cfg.save(tmp_path / "run")
    again = RunConfig.model_validate(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert again == cfg
    from_yaml = load_config(config_file=tmp_path / "run" / "config.yaml")
    assert from_yaml == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.lrr=1"], r"unknown option 'train.lrr'; did you mean 'train.lr'\?"),
        (["lr=1"], r"unknown option 'lr'"),
        (["train.lr"], r"expected key=value"),
        (["train.lr=abc"], r"train.lr: .*number.*'abc'"),
        (["model.mode=xyz"], r"model.mode"),
        (["train.lr=-1"], r"train.lr"),
        (["model.time_dim=7"], r"time_dim must be even"),
        (["model.conditions=[a, a]"], r"distinct"),
        (["train.min_lr=1", "train.lr=0.1"], r"min_lr"),
    ],
)
def test_bad_overrides_give_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as exc:
        load_config("tiny", overrides=overrides)
    assert "\n" not in str(exc.value)


def test_bad_preset_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown preset 'tinyy'; did you mean 'tiny'"):
        load_config("tinyy")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(config_file=bad)
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option 'train.learning_rate'"):
        load_config(config_file=extra)


def test_apply_overrides_does_not_mutate_input():
    d = {"train": {"lr": 1.0}}
    out = apply_overrides(d, ["train.lr=2"])
    assert d == {"train": {"lr": 1.0}} and out["train"]["lr"] == 2
