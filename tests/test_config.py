import pytest

from t2i.api import make_config
from t2i.config import from_dict, load_yaml, override, save_yaml
from t2i.errors import UserError
from t2i.families.ldm import Config


def test_yaml_round_trip(tmp_path):
    cfg = make_config("ldm", "tiny", ["train.lr=3e-4", "unet.channel_mult=[1, 2, 3]"])
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(Config, tmp_path / "c.yaml")
    assert back == cfg and back.train.lr == 3e-4 and back.unet.channel_mult == (1, 2, 3)


def test_unknown_keys_name_the_nearest():
    with pytest.raises(UserError, match="did you mean lr"):
        from_dict(Config, {"train": {"lrr": 1.0}})
    with pytest.raises(UserError, match="unknown config key 'unett'"):
        from_dict(Config, {"unett": {}})
    with pytest.raises(UserError, match="did you mean steps"):
        override(Config(), ["train.stepz=3"])


def test_wrong_types_are_errors():
    with pytest.raises(UserError, match=r"train\.steps"):
        from_dict(Config, {"train": {"steps": "many"}})
    with pytest.raises(UserError, match=r"key\.sub=value"):
        override(Config(), ["train.steps"])


def test_unknown_preset():
    with pytest.raises(UserError, match=r"available: .*tiny"):
        make_config("ldm", "nope")
