"""The family contract, over the whole registry: every family trains its tiny preset, loads through the
contract alone, rejects a bad option in one line, and generates (or, for a scorer, scores)."""

import dataclasses

import pytest
from PIL import Image

from t2i.api import load, load_generator, train
from t2i.errors import UserError
from t2i.eval.shapesbench import score_image
from t2i.families import FAMILIES, all_families, get_family
from t2i.families.base import CLIP_TASKS, TASKS, Family, Input, Options
from t2i.images import Clip


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(request.param, out, preset="tiny", progress=False)
    return get_family(request.param), out


def test_every_family_is_a_complete_record():
    for fam in all_families():
        assert isinstance(fam, Family) and fam.stages and set(fam.tasks) <= set(TASKS)
        assert fam.kind == "scorer" or issubclass(fam.options, Options)


def same_image(a: Image.Image, b: Image.Image) -> bool:
    """Equal up to the last rounding step. The math does not depend on the batch, but a CPU's fp32 GEMM may
    block a batch of 1 and of 2 differently: on an AVX2-only EPYC (2026-12-06) LDM tiny's image differed
    by 1/255 in 0.008% of its values. A batch or seed mix-up changes far more than that."""
    import numpy as np

    x, y = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    return x.shape == y.shape and np.abs(x - y).max() <= 1 and (x != y).mean() < 0.01


def test_family_trains_loads_and_does_its_job(trained):
    fam, run = trained
    thing = load(run)
    if fam.kind == "scorer":
        sims = thing.similarity([Image.new("RGB", (64, 64), "white")], ["a red circle", "two blue squares"])
        assert tuple(sims.shape) == (1, 2)
        with pytest.raises(UserError, match="cannot generate images"):
            load_generator(run)
        return
    opts = thing.options()
    assert isinstance(opts, fam.options) and all(v is not None for k, v in dataclasses.asdict(opts).items()
                                                 if k not in ("top_k", "top_p"))
    images = thing(["a red circle", "two blue squares"], seed=0, candidates=1)
    side = images[0].size[0]
    assert [im.size for im in images] == [(side, side)] * 2 and side >= 32
    assert isinstance(score_image(images[0], "a red circle"), tuple)
    again = thing(["two blue squares"], seeds=[1], options=thing.options(candidates=1))
    assert same_image(again[0], images[1])  # image i depends on its seed, not on its batch
    assert same_image(thing("a red circle", seed=0, candidates=1)[0], images[0])  # a string: one prompt


def test_bad_option_is_a_one_line_error_on_the_cli(trained, cli, tmp_path):
    fam, run = trained
    if fam.kind == "scorer":
        r = cli("generate", run, "a red circle", "--out", tmp_path / "x.png")
        assert r.returncode == 2 and "cannot generate images" in r.stderr
        return
    r = cli("generate", run, "a red circle", "--candidates", "0", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--candidates must be at least 1" in r.stderr
    others = {f.name for g in all_families() if g.options for f in dataclasses.fields(g.options)}
    for name in sorted(others - {f.name for f in dataclasses.fields(fam.options)})[:1]:  # another family's option
        r = cli("generate", run, "a red circle", "--" + name.replace("_", "-"), "1", "--out", tmp_path / "x.png")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"does not apply to {fam.name} runs" in r.stderr


def test_tasks_a_family_cannot_do_name_the_families_that_can(trained):
    fam, run = trained
    if fam.kind == "scorer":
        return
    pipe = load(run)
    for task in TASKS:
        if task in fam.tasks:
            continue
        image = Image.new("RGB", (64, 64))
        inp = Input(task, Clip((image,) * 2) if task in CLIP_TASKS else image, Image.new("L", (64, 64)))
        with pytest.raises(UserError, match=f"task {task} is not supported by {fam.name} runs"):
            pipe(["a red circle"], inputs=[inp], candidates=1)


def test_cli_lists_every_family_from_its_record(cli):
    r = cli("families")
    assert r.returncode == 0
    for fam in all_families():
        assert f"{fam.name} " in r.stdout and " -> ".join(fam.stages) in r.stdout
