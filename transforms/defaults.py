"""Option values and defaults shared by the command line and the transforms.

Kept free of Beam and TensorFlow imports so that `bert-embed run --help` and option errors answer without loading
either (pipeline/options.py imports this, not the transforms that use the values).
"""

# transforms/batching.py: the padded lengths encoder batches are bucketed into, and the padded tokens per batch.
DEFAULT_BUCKET_SPEC = "2-64,72-128/8"
DEFAULT_MAX_BATCH_TOKENS = 4096

# transforms/duplicates.py: what happens to records that share an id.
DUPLICATE_ID_POLICIES = ("dead-letter", "fail", "keep")
DEFAULT_DUPLICATE_ID_POLICY = "dead-letter"
