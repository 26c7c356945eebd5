"""Text sides that are not trained with the generator: frozen pretrained language models (Imagen)."""
