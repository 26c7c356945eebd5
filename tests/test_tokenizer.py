"""The caption tokenizer: byte-level BPE trained on shapes captions, padding/truncation, persistence."""

import json
import logging

import pytest
import torch

from t2i.data.shapes import iter_samples
from t2i.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, normalize_text
from t2i.errors import UserError


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return [s.caption for s in iter_samples(500, seed=0)]


@pytest.fixture(scope="module")
def tok(captions) -> Tokenizer:
    return Tokenizer.train(captions, vocab_size=512)


def test_trains_a_small_vocabulary_with_whole_word_tokens(tok):
    assert 256 + 3 < tok.vocab_size <= 512
    _, mask = tok.encode(["a red circle left of a blue square"], max_len=16)
    assert mask.sum().item() == 2 + 8  # bos, eight words each learned as one token, eos


def test_round_trips_every_caption(tok, captions):
    ids, mask = tok.encode(captions, max_len=24)
    assert tok.last_truncated == 0
    assert tok.decode_batch(ids) == captions
    assert max(tok.num_tokens(captions)) == mask.sum(dim=1).max().item()


def test_unseen_words_and_bytes_still_encode(tok):
    text = "A Zebra   on ÜNÏCODE 🙂\tstreet"
    ids, _ = tok.encode([text], max_len=64)
    assert tok.last_truncated == 0
    assert tok.decode(ids[0]) == "a zebra on ünïcode 🙂 street" == normalize_text(text)
    assert tok.encode(["  A  RED\ncircle "], 8)[0].tolist() == tok.encode(["a red circle"], 8)[0].tolist()
    # Special-token strings inside a caption are just text: they can neither end nor pad it.
    ids, mask = tok.encode(["a <eos> and <pad>"], max_len=32)
    assert ids[0, 1 : int(mask.sum()) - 1].tolist().count(EOS_ID) == 0 and PAD_ID not in ids[0, : int(mask.sum())]
    assert tok.decode(ids[0]) == "a <eos> and <pad>"


def test_padding_mask_and_empty_caption(tok):
    ids, mask = tok.encode(["a red circle", ""], max_len=8)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (2, 8)
    assert ids[0, 0] == BOS_ID and ids[0, 4] == EOS_ID and (ids[0, 5:] == PAD_ID).all()
    assert mask[0].tolist() == [True] * 5 + [False] * 3
    assert ids[1, :2].tolist() == [BOS_ID, EOS_ID] and (ids[1, 2:] == PAD_ID).all()
    assert mask[1].tolist() == [True] * 2 + [False] * 6
    assert tok.decode(ids[1]) == ""


def test_truncation_keeps_eos_counts_and_warns(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="t2i.text"):
        ids, mask = tok.encode(["a red circle left of a blue square", "a red circle"], max_len=5)
    assert tok.last_truncated == 1
    assert "were cut" in caplog.text and "max_len=5" in caplog.text and "byte tokens" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2i.text"):
        tok.encode(["🔴🔵🟢 circle " * 3], max_len=8)  # emoji: many byte tokens each, said as such
    assert "emoji or non-Latin script, cost up to 4 byte tokens each" in caplog.text
    assert ids[0].tolist()[0] == BOS_ID and ids[0].tolist()[-1] == EOS_ID and mask[0].all()
    assert tok.decode(ids[0]) == "a red circle"
    assert tok.decode(ids[1]) == "a red circle"
    caplog.clear()
    tok.encode(["a red circle"], max_len=5)
    assert tok.last_truncated == 0 and not caplog.records
    with pytest.raises(ValueError):
        tok.encode(["a"], max_len=1)


def test_save_load_gives_identical_ids(tok, captions, tmp_path):
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    texts = [*captions[:50], "an unseen ünïcode caption"]
    assert torch.equal(loaded.encode(texts, 16)[0], tok.encode(texts, 16)[0])
    assert loaded.vocab_size == tok.vocab_size
    assert Tokenizer.load(tmp_path).vocab_size == tok.vocab_size  # a directory holding tokenizer.json


def test_bad_files_are_user_errors(tok, tmp_path):
    with pytest.raises(UserError, match=r"missing\.json.*not found"):
        Tokenizer.load(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(UserError, match=r"corrupt\.json"):
        Tokenizer.load(corrupt)
    # Valid for the `tokenizers` library but without our special tokens at ids 0-2.
    foreign = tmp_path / "foreign.json"
    data = json.loads(tok.save(tmp_path / "ok.json").read_text())
    data["added_tokens"] = []
    data["model"]["vocab"] = {k: v + 10 for k, v in data["model"]["vocab"].items()}
    foreign.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"foreign\.json.*special tokens"):
        Tokenizer.load(foreign)
    with pytest.raises(UserError, match="vocab_size"):
        Tokenizer.train(["a red circle"], vocab_size=100)
