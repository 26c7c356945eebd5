import logging
from pathlib import Path

import pytest
import yaml

from t2i.api import make_config
from t2i.config import from_dict, load_yaml, override, save_yaml
from t2i.errors import UserError
from t2i.families import get_family
from t2i.families.ldm import Config


def test_yaml_round_trip(tmp_path):
    cfg = make_config("ldm", "tiny", ["stages.diffusion.lr=3e-4", "unet.channel_mult=[1, 2, 3]"])
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(Config, tmp_path / "c.yaml")
    assert back == cfg and back.stages.diffusion.lr == 3e-4 and back.unet.channel_mult == (1, 2, 3)


def test_unknown_keys_name_the_nearest():
    with pytest.raises(UserError, match="did you mean lr"):
        from_dict(Config, {"stages": {"diffusion": {"lrr": 1.0}}})
    with pytest.raises(UserError, match="unknown config key 'unett'"):
        from_dict(Config, {"unett": {}})
    with pytest.raises(UserError, match="did you mean steps"):
        override(Config(), ["stages.diffusion.stepz=3"])


def test_wrong_types_are_errors():
    with pytest.raises(UserError, match=r"stages\.diffusion\.steps"):
        from_dict(Config, {"stages": {"diffusion": {"steps": "many"}}})
    with pytest.raises(UserError, match=r"key\.sub=value"):
        override(Config(), ["stages.diffusion.steps"])


def test_unknown_preset():
    with pytest.raises(UserError, match=r"available: .*tiny"):
        make_config("ldm", "nope")


OLD = Path(__file__).parent / "data" / "configs-2026-11"  # tiny presets as the code of 2026-11 saved them


@pytest.mark.parametrize("family", ["ldm", "ddpm", "clip", "dalle", "parti", "maskgit"])
def test_old_stage_keys_convert_to_exactly_todays_config(family):
    fam = get_family(family)
    old = yaml.safe_load((OLD / f"{family}-tiny.yaml").read_text())
    assert "stages" not in old and set(fam.legacy) <= set(old)
    assert from_dict(fam.config, fam.upgrade(old, "old.yaml")) == make_config(family, "tiny")


def test_old_seeds_become_the_one_seed_and_a_conflict_is_said(caplog):
    fam = get_family("ldm")
    old = yaml.safe_load((OLD / "ldm-tiny.yaml").read_text())
    for section in ("ae_train", "train", "data"):
        old[section]["seed"] = 3
    with caplog.at_level(logging.WARNING):
        assert fam.upgrade(old, "x")["seed"] == 3
    assert not caplog.records
    old["data"]["seed"] = 5
    with caplog.at_level(logging.WARNING):
        assert fam.upgrade(old, "x.yaml")["seed"] == 3
    assert "x.yaml" in caplog.text and "data.seed=5" in caplog.text and "every stage now follows seed 3" in caplog.text


def test_old_keys_in_set_and_presets_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"--set: 'train.steps' is now 'stages.diffusion.steps'"):
        make_config("ldm", "tiny", ["train.steps=5"])
    with pytest.raises(UserError, match=r"'vq_train.lr' is now 'stages.vq.lr'"):
        make_config("dalle", "tiny", ["vq_train.lr=1e-3"])
    with pytest.raises(UserError, match=r"'train.seed' is now seed"):
        make_config("clip", "tiny", ["train.seed=2"])
    with pytest.raises(UserError, match=r"'data.seed' is now the run's one top-level 'seed'"):
        make_config("ldm", "tiny", ["data.seed=2"])
    preset = tmp_path / "mine.yaml"
    preset.write_text("ae_train: {steps: 3}\n")
    with pytest.raises(UserError, match=rf"preset {preset}: 'ae_train.steps' is now 'stages.autoencoder.steps'"):
        make_config("ldm", str(preset))


def test_a_stage_trains_and_generates_at_its_own_resolution(tmp_path):
    """The cascade's need: a stage's `resolution` reaches its data and, for the generating stage, the output."""
    import t2i
    from t2i.api import train

    out = tmp_path / "r"
    train("ddpm", str(out), preset="tiny", overrides=["stages.diffusion.resolution=48"], progress=False)
    assert t2i.load(str(out))([""], steps=2)[0].size == (48, 48)
