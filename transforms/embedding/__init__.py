"""EmbedTexts and its steps: preprocess -> batching -> encode -> merge_windows (README "Layout")."""
