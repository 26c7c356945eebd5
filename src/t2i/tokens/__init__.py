"""Token-model process: decoding (autoregressive with a KV cache, parallel MaskGIT) and the patch layout of codes."""
