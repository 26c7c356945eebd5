"""A byte-level BPE tokenizer trained on the captions (GPT-2's scheme, via the `tokenizers` library).

Byte-level means the base vocabulary is the 256 byte values, so any string -- an unseen word, a typo,
emoji -- encodes to *something*; BPE merges then make the frequent words single tokens. Training on our
own captions keeps the vocabulary tiny (a few hundred entries for `shapes`), which is what lets a text
encoder this small learn it.

Text is lower-cased and whitespace-normalised first (captions carry no case information worth learning
at this scale). Every encoding is ``<bos> tokens... <eos> <pad>...``: ids 0, 1, 2 are `<pad>`, `<bos>`,
`<eos>`, and the empty string encodes to just ``<bos> <eos>``, which models use as "no caption"
(classifier-free guidance's unconditional input).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

from t2i.errors import UserError

log = logging.getLogger("t2i.text")

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FILENAME = "tokenizer.json"
_MIN_VOCAB = 256 + len(SPECIALS)  # the byte alphabet and the special tokens


def normalize_text(text: str) -> str:
    """Lower-case, collapse runs of whitespace to one space, strip the ends."""
    return " ".join(text.lower().split())


class Tokenizer:
    """Wraps a trained `tokenizers.Tokenizer`; build one with `Tokenizer.train` or `Tokenizer.load`."""

    def __init__(self, tokenizer: _HFTokenizer):
        self._tok = tokenizer
        # A caption that happens to contain "<eos>" is text, not a control token.
        self._tok.encode_special_tokens = True
        self.last_truncated = 0  # how many texts the most recent `encode` call had to cut

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 512) -> Tokenizer:
        """Learn BPE merges from captions, up to `vocab_size` entries (fewer if the text runs out of merges)."""
        if vocab_size < _MIN_VOCAB + 1:
            raise UserError(f"tokenizer vocab_size {vocab_size} is too small; byte-level BPE needs more than "
                            f"{_MIN_VOCAB} (256 bytes + {len(SPECIALS)} special tokens), e.g. 512")
        tok = _HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator((normalize_text(c) for c in captions), trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json (to `path`, or into it if it is a directory); returns the file written."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer.json written by `save` (or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise UserError(f"tokenizer file {path} not found; pass the {FILENAME} saved next to the "
                            "checkpoint, or train a new tokenizer")
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception with a parser message
            raise UserError(f"tokenizer file {path} is not a valid {FILENAME} ({e}); re-save it or train "
                            "a new tokenizer") from e
        if [tok.token_to_id(s) for s in SPECIALS] != [PAD_ID, BOS_ID, EOS_ID]:
            raise UserError(f"tokenizer file {path} lacks t2i's special tokens {', '.join(SPECIALS)} at ids "
                            "0-2; it was not written by t2i, train a new tokenizer")
        return cls(tok)

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not a single string")
        return [e.ids for e in self._tok.encode_batch([normalize_text(t) for t in texts])]

    def num_tokens(self, texts: Sequence[str]) -> list[int]:
        """Encoded length of each text including <bos> and <eos>: the max_len that avoids truncation."""
        return [len(p) + 2 for p in self._pieces(texts)]

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
        """texts -> (ids (B, max_len) long, mask (B, max_len) bool, True at real tokens incl. bos/eos).

        Longer texts are cut to fit and still end in <eos>; `last_truncated` counts them and a warning
        goes to the "t2i.text" logger, since a cut caption silently changes what a model is asked for.
        """
        if max_len < 2:
            raise ValueError(f"max_len {max_len} leaves no room for <bos> and <eos>")
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
        cut = []
        for i, piece in enumerate(self._pieces(texts)):
            if len(piece) > max_len - 2:
                cut.append(texts[i])
                piece = piece[: max_len - 2]
            row = [BOS_ID, *piece, EOS_ID]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        self.last_truncated = len(cut)
        if cut:
            example = cut[0] if len(cut[0]) <= 60 else cut[0][:57] + "..."
            rare = " (characters unlike the training captions', emoji or non-Latin script, cost up to 4 byte " \
                "tokens each)" if any(ord(c) > 127 for c in cut[0]) else ""
            log.warning("%d of %d texts were longer than the model's text limit (max_len=%d tokens) and were cut, "
                        "e.g. %r%s", len(cut), len(texts), max_len, example, rare)
        return ids, mask

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """One sequence of ids -> text, stopping at the first <eos> and dropping special tokens."""
        if isinstance(ids, Tensor) and ids.ndim != 1:
            raise ValueError(f"decode takes one sequence, got shape {tuple(ids.shape)}; use decode_batch")
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if EOS_ID in seq:
            seq = seq[: seq.index(EOS_ID)]
        return self._tok.decode(seq, skip_special_tokens=True).strip()

    def decode_batch(self, ids: Tensor) -> list[str]:
        """(B, L) ids -> B texts."""
        return [self.decode(row) for row in ids]
