"""Shared network building blocks: one attention, conv/transformer blocks, the UNet, the text encoder."""

from t2i.nn.attention import Attention, KVCache
from t2i.nn.blocks import Downsample, ResBlock, SpatialTransformer, TransformerBlock, Upsample
from t2i.nn.embeddings import TimestepEmbedding, timestep_embedding
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.nn.unet import UNet, UNetConfig

__all__ = [
    "Attention",
    "Downsample",
    "KVCache",
    "ResBlock",
    "SpatialTransformer",
    "TextEncoder",
    "TextEncoderConfig",
    "TimestepEmbedding",
    "TransformerBlock",
    "UNet",
    "UNetConfig",
    "Upsample",
    "timestep_embedding",
]
