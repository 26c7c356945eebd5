"""`t2i eval --metrics ...` reports and `t2i compare`, end to end on a tiny LDM run and a tiny CLIP run."""

import json
import shutil

import pytest

from t2i.api import train
from t2i.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    train("ldm", root / "ldm", preset="tiny", overrides=["stages.diffusion.eval_every=0"], progress=False)
    train("clip", root / "clip", preset="tiny", progress=False)
    return root / "ldm", root / "clip"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_CACHE", str(tmp_path / "cache"))


def test_report_with_every_metric(runs, tmp_path, capsys):
    ldm, clip = runs
    assert main(["eval", str(ldm), "--n", "12", "--steps", "2", "--clip", str(clip), "-q"]) == 0
    rep = json.loads((ldm / "eval" / "report.json").read_text())
    assert rep["metrics"] == ["shapesbench", "clip", "fid", "kid"] and rep["images"] == 12
    s = rep["scores"]
    assert 0 <= s["shapesbench"] <= 1 and 0 <= s["clip_score_100"] <= 100 and 0 <= s["clip_s_hessel"] <= 2.5
    assert s["fid"] >= 0 and "kid" in s and "kid_std" in s
    assert rep["fid_kid"]["features"].startswith("clip-") and rep["fid_kid"]["n_real"] == 12
    assert not rep["fid_kid"]["reference_cached"]
    assert set(rep["kinds"]) == {"single_object", "size", "two_object", "position", "counting", "novel"}
    assert sum(v["n"] for v in rep["kinds"].values()) == 12
    for k in rep["kinds"]:
        assert (ldm / "eval" / "report" / f"grid_{k}.png").is_file()
    assert (ldm / "eval" / "report" / "kinds.png").is_file()
    md = (ldm / "eval" / "report.md").read_text()
    assert "clip_score_100" in md and "report/kinds.png" in md and "## Per kind" in md
    assert "report/curves.png" in md and (ldm / "eval" / "report" / "curves.png").is_file()
    assert (ldm / "eval" / "shapesbench.json").is_file()  # the plain ShapesBench result is still written
    # A second evaluation reuses the cached reference features.
    assert main(["eval", str(ldm), "--n", "12", "--steps", "2", "--clip", str(clip), "--metrics", "fid", "-q"]) == 0
    rep2 = json.loads((ldm / "eval" / "report.json").read_text())
    assert rep2["fid_kid"]["reference_cached"] and rep2["scores"]["fid"] == pytest.approx(s["fid"], rel=1e-6)
    assert set(rep2["scores"]) == {"fid"}


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics", "clip"], "metric 'clip' needs a lab CLIP run: pass --clip"),
    (["--metrics", "fid"], "FID/KID need features: pass --clip RUN"),
    (["--metrics", "fid", "--inception", "/nonexistent/pt_inception.pth"], "not found"),
    (["--metrics", "fid,bleu"], "unknown metric 'bleu'"),
    (["--metrics", "fid", "--fid-features", "clip", "--inception", "x.pth"], "need a lab CLIP run"),
])
def test_report_bad_options(runs, capsys, args, message):
    assert main(["eval", str(runs[0]), "--n", "4", "--steps", "1", "-q", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_clip_run_given_as_the_generator_or_a_generator_given_as_clip(runs, capsys):
    ldm, clip = runs
    assert main(["eval", str(clip), "--n", "4", "-q"]) == 2
    assert "cannot generate images" in capsys.readouterr().err
    assert main(["eval", str(ldm), "--n", "4", "--steps", "1", "--clip", str(ldm), "-q"]) == 2
    assert "is a 'ldm' run, not a CLIP run" in capsys.readouterr().err


def test_compare_writes_one_table_and_a_plot(runs, tmp_path, capsys):
    ldm, clip = runs
    assert main(["eval", str(ldm), "--n", "6", "--steps", "2", "--clip", str(clip), "-q"]) == 0
    other = tmp_path / "ldm-copy"
    shutil.copytree(ldm, other)
    capsys.readouterr()
    assert main(["compare", str(ldm), str(other), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for col in ("ShapesBench", "CLIP score", "FID", "KID", "s/image", "params (M)", "train min"):
        assert col in header
    assert "ldm-copy" in out
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(rows) == 2 and rows[0]["params_m"] > 0 and rows[0]["train_min"] > 0 and rows[0]["s_per_image"] > 0
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
    assert main(["compare", str(clip), "--out", str(tmp_path / "c2")]) == 2
    assert "has no evaluation yet" in capsys.readouterr().err


def test_report_with_standard_inception_features_from_a_local_file(runs, tmp_path):
    import torch

    from t2i.eval.fid import FIDInceptionV3

    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-random.pth"  # random weights: the code path, not meaningful numbers
    torch.save(FIDInceptionV3().state_dict(), weights)
    ldm = runs[0]
    # KID only: FID's 2048x2048 matrix square root is slow on one core; its math is tested in test_fid.
    assert main(["eval", str(ldm), "--n", "4", "--steps", "1", "--metrics", "kid", "--inception", str(weights),
                 "-q"]) == 0
    rep = json.loads((ldm / "eval" / "report.json").read_text())
    assert rep["fid_kid"]["features"].startswith("inception-") and rep["fid_kid"]["n_fake"] == 4
    assert set(rep["scores"]) == {"kid", "kid_std"}


def test_sampling_phrase_names_token_filters_only_when_on():
    from t2i.eval.runs import describe_sampling

    assert describe_sampling({"sampler": "ddim", "steps": 50, "guidance": 3.0}) == "ddim, 50 steps, guidance 3.0"
    token = {"sampler": "autoregressive", "steps": 64, "guidance": 1.5, "top_k": 8, "top_p": None,
             "temperature": 1.0}
    assert describe_sampling(token) == "autoregressive, 64 steps, guidance 1.5, top-k 8"
    token.update(top_k=None, top_p=0.9, temperature=0.7)
    assert describe_sampling(token) == "autoregressive, 64 steps, guidance 1.5, top-p 0.9, temperature 0.7"


def test_curves_read_every_stage_and_the_probes(runs, tmp_path, capsys):
    import csv

    from PIL import Image

    from t2i.eval.report import _smooth, training_curves

    ldm, _ = runs
    logged = list(csv.DictReader((ldm / "log.csv").open()))
    loss, probes = training_curves([ldm])
    assert [label for label, _, _ in loss] == list(dict.fromkeys(r["stage"] for r in logged))
    ae = [r for r in logged if r["stage"] == loss[0][0]]
    assert loss[0][1] == [float(r["step"]) for r in ae]
    assert loss[0][2] == pytest.approx(_smooth([float(r["loss"]) for r in ae], 10))
    assert probes == []  # this run logged no probe (eval_every=0)
    # A probe logged during training is plotted against minutes; several runs are told apart by name.
    other = tmp_path / "arm"
    shutil.copytree(ldm, other)
    (other / "eval.csv").write_text("stage,step,train_minutes,shapesbench,novel\ndiffusion,4,0.5,0.25,0.1\n"
                                    "diffusion,8,1.0,0.5,0.2\n")
    loss2, probes2 = training_curves([ldm, other])
    assert {label.split()[0] for label, _, _ in loss2} == {"ldm", "arm"}
    assert probes2 == [("arm diffusion", [0.5, 1.0], [0.25, 0.5])]
    assert main(["curves", str(ldm), str(other), "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 1000  # two panels
    assert main(["curves", str(tmp_path / "nothing"), "--out", str(tmp_path / "d.png")]) == 2
    assert "has no log.csv" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
    assert main(["curves", str(ldm), "--smooth", "0", "--out", str(tmp_path / "e.png")]) == 2
    assert "--smooth must be at least 1" in capsys.readouterr().err and not (tmp_path / "e.png").exists()


def test_smooth_is_a_trailing_mean():
    from t2i.eval.report import _smooth

    assert _smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert _smooth([2.0], 10) == [2.0]
