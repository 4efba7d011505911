"""The worker runtime: TensorFlow and numpy code a worker runs (loading, tokenizing, encoding, pooling, precision,
MLM scoring), no Beam pipeline constructs; also used in-process by pipeline.api.embed()."""
