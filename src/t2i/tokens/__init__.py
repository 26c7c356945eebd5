"""Token-model machinery: decoding (autoregressive with a KV cache, parallel MaskGIT) and the shared family parts."""
