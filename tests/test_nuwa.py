"""NUWA: the 3D nearby / axial / full attention patterns, the KV cache under them, the multi-task schedule, and
the family end to end -- images, clips, prediction, sketches, completion -- with its one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

import t2i
from t2i.api import train
from t2i.errors import UserError
from t2i.eval import videobench as vb
from t2i.families.base import Input
from t2i.families.nuwa import NetConfig, NuwaNet, TaskConfig, attention_pattern, grid_index, task_schedule
from t2i.images import Clip
from t2i.nn.attention import KVCache


# ----------------------------------------------------------------------------------------------- parts
def _code(j: int, frames: int, side: int) -> tuple[int, int, int]:
    return tuple(grid_index(frames, side)[j - 1].tolist())


def test_nearby_attention_sees_start_itself_and_earlier_codes_of_its_neighbourhood():
    frames, side = 3, 4
    pos = grid_index(frames, side)
    m = attention_pattern("nearby", (3, 3, 3), frames, side)
    assert m.shape == (48, 48)
    for i in range(48):
        for j in range(48):
            if j == 0 or j == i:
                assert m[i, j]
                continue
            p, q = _code(j, frames, side), tuple(pos[i].tolist())
            near = q[0] - p[0] <= 1 and abs(q[1] - p[1]) <= 1 and abs(q[2] - p[2]) <= 1
            assert bool(m[i, j]) == (j - 1 < i and near), (i, j)
    full, axial = (attention_pattern(k, (3, 3, 3), frames, side) for k in ("full", "axial"))
    assert torch.equal(full, torch.ones(48, 48, dtype=torch.bool).tril())
    assert (m & ~full).sum() == 0 and (axial & ~full).sum() == 0  # every pattern is causal
    # axial: a code in another frame is seen only at the same pixel
    i = 2 * 16 + 5  # frame 2, row 1, col 1
    seen = [_code(j, frames, side) for j in range(1, 48) if axial[i, j] and j != i]
    assert all((f == 2 and (r == 1 or c == 1)) or (r, c) == (1, 1) for f, r, c in seen)


def _net(attention: str = "nearby", depth: int = 1, frames: int = 3, side: int = 4) -> NuwaNet:
    torch.manual_seed(0)
    cfg = NetConfig(dim=32, depth=depth, heads=2, text_depth=1, attention=attention)
    return NuwaNet(cfg, text_vocab=20, text_len=6, codebook_size=16, side=side, frames=frames).eval()


def _cond(net: NuwaNet, b: int = 2, sketch: bool = False) -> dict:
    ids, mask = torch.randint(0, 20, (b, 6)), torch.ones(b, 6, dtype=torch.bool)
    return net.prepare(ids, mask, torch.randint(0, 16, (b, 16)) if sketch else None)


def test_a_nearby_position_cannot_read_a_code_outside_its_neighbourhood():
    codes = torch.randint(0, 16, (2, 47))
    far = codes.clone()
    far[:, 0] = (far[:, 0] + 1) % 16  # frame 0, row 0, col 0: two frames before the last position
    with torch.no_grad():
        for attention, changes in (("nearby", False), ("full", True)):
            net = _net(attention)
            cond = _cond(net)
            a, b = net.states(cond, codes)[:, -1], net.states(cond, far)[:, -1]
            assert (not torch.allclose(a, b, atol=1e-6)) == changes, attention


@pytest.mark.parametrize("attention", ["nearby", "axial", "full"])
@pytest.mark.parametrize("sketch", [False, True])
def test_cached_decoding_gives_the_states_of_a_full_pass(attention, sketch):
    net = _net(attention, depth=2)
    cond = _cond(net, sketch=sketch)
    codes = torch.randint(0, 16, (2, 47))
    with torch.no_grad():
        full = net.states(cond, codes)
        caches = [KVCache() for _ in range(net.layers)]
        step = [net.states(cond, codes[:, :10], caches)]  # a prefix in one pass, then one code at a time
        for i in range(10, 47):
            step.append(net.states(cond, codes[:, :i + 1], caches))
    assert torch.allclose(torch.cat(step, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("attention", ["nearby", "axial", "full"])
def test_the_block_sparse_path_gives_the_dense_result_and_gradients(attention, monkeypatch):
    from t2i.nn import attention as attn

    net = _net(attention, depth=2, frames=8, side=4)  # 128 positions: two blocks of 64 queries
    cond = _cond(net)
    codes = torch.randint(0, 16, (2, 127))
    out = []
    for block in (64, 10**6):  # blocked, then one block (the dense path)
        monkeypatch.setattr(attn, "SPARSE_BLOCK", block)
        net.zero_grad()
        h = net.states(cond, codes)
        h.square().sum().backward(retain_graph=True)
        out.append((h.detach(), net.code_emb.weight.grad.clone()))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5) and torch.allclose(out[0][1], out[1][1], atol=1e-4)


def test_the_sketch_is_read_through_its_matching_neighbourhood():
    net = _net("nearby", side=8, frames=1)
    ids, mask = torch.randint(0, 20, (1, 6)), torch.ones(1, 6, dtype=torch.bool)
    sk = torch.randint(0, 16, (1, 64))
    other = sk.clone()
    other[0, 63] = (other[0, 63] + 1) % 16  # the sketch's bottom-right code
    codes = torch.randint(0, 16, (1, 63))
    with torch.no_grad():
        a = net.states(net.prepare(ids, mask, sk), codes)
        b = net.states(net.prepare(ids, mask, other), codes)
    # the encoder mixes the sketch (bidirectional), so every position may change; what the cross-attention
    # pattern guarantees is that the top-left position reads only the top-left of the sketch grid
    pattern = net.sketch_cross
    assert pattern[0, 6:].view(8, 8)[:2, :2].all() and pattern[0, 6:].sum() == 4
    assert pattern[:, :6].all() and not torch.allclose(a, b)


def test_the_task_schedule_is_a_pure_function_of_seed_and_step_and_skips_weightless_tasks():
    cfg = TaskConfig(t2i=1.0, t2v=1.0, predict=0.0, sketch=0.5)
    drawn = [task_schedule(cfg, 0, s) for s in range(400)]
    assert drawn == [task_schedule(cfg, 0, s) for s in range(400)]
    assert "predict" not in drawn and {"t2i", "t2v", "sketch"} == set(drawn)
    assert 0.1 < drawn.count("sketch") / 400 < 0.3
    assert cfg.trained() == ["t2i", "t2v", "sketch", "complete"]


# ---------------------------------------------------------------------------------------------- family
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("nuwa") / "run"
    train("nuwa", path, preset="tiny", progress=False)
    return path


@pytest.fixture(scope="module")
def pipe(run):
    return t2i.load(run)


def test_captions_of_motion_make_clips_and_others_images(pipe):
    out = pipe(["a red circle moving left", "a red circle"], seed=0)
    assert isinstance(out[0], Clip) and len(out[0]) == 4 and out[0].size == 32
    assert isinstance(out[1], Image.Image) and out[1].size == (32, 32)
    forced = pipe(["a red circle"], seed=0, frames=3)[0]
    assert isinstance(forced, Clip) and len(forced) == 3
    again = pipe(["a red circle moving left"], seeds=[0])[0]
    assert again.strip().tobytes() == out[0].strip().tobytes()  # a clip depends on its seed, not its batch
    pipe.use_cache = False
    try:
        assert pipe(["a red circle moving left"], seed=0)[0].strip().tobytes() == out[0].strip().tobytes()
    finally:
        pipe.use_cache = True


def test_prediction_sketch_and_completion_keep_what_they_were_given(pipe):
    reqs = {t: vb.task_requests(t, 2, frames=4, size=32) for t in ("predict", "sketch", "complete")}
    clips = pipe([r["prompt"] for r in reqs["predict"]], seed=0,
                 inputs=[Input("predict", r["image"]) for r in reqs["predict"]])
    for c, r in zip(clips, reqs["predict"], strict=True):
        assert isinstance(c, Clip) and len(c) == 4
        assert [f.tobytes() for f in c.frames[:2]] == [f.tobytes() for f in r["image"].frames]
    sketches = pipe([r["prompt"] for r in reqs["sketch"]], seed=0,
                    inputs=[Input("sketch", r["image"]) for r in reqs["sketch"]])
    assert all(im.size == (32, 32) for im in sketches)
    done = pipe([r["prompt"] for r in reqs["complete"]], seed=0,
                inputs=[Input("complete", r["image"]) for r in reqs["complete"]])
    for im, r in zip(done, reqs["complete"], strict=True):
        assert im.crop((0, 0, 32, 16)).tobytes() == r["image"].crop((0, 0, 32, 16)).tobytes()


def test_requests_a_run_cannot_serve_are_one_line_errors(pipe):
    two, three = (Input("predict", Clip((Image.new("RGB", (32, 32)),) * k)) for k in (2, 3))
    clips = pipe(["", ""], seed=0, inputs=[two, three])  # one batch, two lengths of context
    assert [len(c) for c in clips] == [4, 4]
    with pytest.raises(UserError, match=r"continues 2\.\.3 given frames .* got 1"):
        pipe([""], inputs=[Input("predict", Clip((Image.new("RGB", (32, 32)),)))])
    with pytest.raises(UserError, match="the sketch is 64x64; this run draws 32x32"):
        pipe(["a red circle"], inputs=[Input("sketch", Image.new("RGB", (64, 64), "white"))])
    with pytest.raises(UserError, match=r"generates 1\.\.4 frames"):
        pipe(["a red circle"], frames=9)
    narrow = type(pipe)(dataclasses.replace(pipe.cfg, tasks=dataclasses.replace(pipe.cfg.tasks, sketch=0.0)),
                        pipe.tokenizer, pipe.vq, pipe.net)
    with pytest.raises(UserError, match="not trained for task sketch; it was trained for t2i, t2v, predict, "
                                        "complete"):
        narrow(["a red circle"], inputs=[Input("sketch", Image.new("RGB", (32, 32), "white"))])


def test_the_cli_writes_clips_gifs_and_scores_task_folders(run, cli, tmp_path):
    r = cli("generate", run, "a blue square moving up", "--out", tmp_path / "clip.gif", "-q")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "clip.gif").n_frames == 4
    r = cli("bench", "inputs", "--task", "predict", "--n", "3", "--frames", "4", "--size", "32", "--out",
            tmp_path / "in")
    assert r.returncode == 0, r.stderr
    r = cli("generate", run, "--inputs", tmp_path / "in", "--out", tmp_path / "out", "-q", "--gif")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert [row["frames"] for row in rows] == [4] * 3 and all(row["task"] == "predict" for row in rows)
    assert (tmp_path / "out" / "00000.gif").is_file()
    r = cli("bench", "score", tmp_path / "out", "-q")
    assert r.returncode == 0 and "predict" in r.stdout, r.stderr


def test_eval_scores_every_task_the_run_trained(run, cli):
    r = cli("eval", run, "--n", "2", "-q")
    assert r.returncode == 0, r.stderr
    video = json.loads((run / "eval" / "videobench.json").read_text())
    assert set(video["tasks"]) == {"t2v", "predict", "sketch", "complete"}
    report = json.loads((run / "eval" / "report.json").read_text())
    assert {"shapesbench", "t2v", "predict", "sketch", "complete"} <= set(report["scores"])
