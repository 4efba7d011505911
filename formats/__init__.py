"""File formats: per-file input readers and decompression; pure Python, no model code, no Beam pipeline constructs."""
