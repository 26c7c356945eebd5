"""What every token family shares: config parts (`config`), the training stages (`stages`) and the pipeline
(`pipeline`).

A token family (DALL-E, Parti, MaskGIT) differs only in its network -- how text and image tokens meet and
which objective trains it. Everything else is the same and lives here, so each family file holds just its
network and a few lines of wiring:

* stages `tokenizer` (BPE on captions) -> `vq` (the VQ image tokenizer, `t2i.codecs.vq`) -> `vq_decoder`
  (optional: its decoder fine-tuned on frozen codes, when `stages.vq_decoder.steps` > 0) -> `transformer`.
  With `tokenizer_run: RUN` (CLI `--tokenizer RUN`) the first two are copied from another token-family run,
  so one trained tokenizer serves several families and comparisons share the same codes.
* the transformer trains on a cache of pre-encoded codes (`data.cache` images through the frozen VQ
  encoder once), since encoding every batch would cost as much as the transformer's own step.
* `TokenPipeline`: prompts -> tokens (autoregressive or parallel decoding, `t2i.tokens.decoding`) -> VQ
  decoder -> images; optional CLIP reranking of N candidates per prompt with a lab CLIP run.

A family's network implements `loss(ids, mask, codes, generator) -> dict`, `prepare(ids, mask) -> cond`
(what decoding reads: text ids, or encoder states), a `head` whose `slot_logits` draws a position's codes
(`t2i.tokens.patches.PatchHead`; `positions`, `slots` and `patch` say how the code grid is laid out), and
either `next_state(cond, patches, caches)` with `layers` (autoregressive) or `masked_state(cond, patches)`
with `mask_id` (parallel, `parallel = True`).
"""

from t2i.families.tokens.config import (
    IMAGE_TOKENIZER,
    LEGACY,
    STAGES,
    BPEConfig,
    DecodeConfig,
    NetConfig,
    TokenConfig,
    TokenStageConfigs,
)
from t2i.families.tokens.pipeline import TokenOptions, TokenPipeline
from t2i.families.tokens.stages import DecoderStage, TokenStage, VQStage, image_side, train_stages

__all__ = ["IMAGE_TOKENIZER", "LEGACY", "STAGES", "BPEConfig", "DecodeConfig", "DecoderStage", "NetConfig",
           "TokenConfig", "TokenOptions", "TokenPipeline", "TokenStage", "TokenStageConfigs", "VQStage", "image_side",
           "train_stages"]
