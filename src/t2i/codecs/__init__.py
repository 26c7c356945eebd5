"""Codecs: maps between pixels and the compact latents or tokens that generative models work in."""

from t2i.codecs.autoencoder import AutoencoderConfig, AutoencoderKL, DiagonalGaussian

__all__ = ["AutoencoderConfig", "AutoencoderKL", "DiagonalGaussian"]
