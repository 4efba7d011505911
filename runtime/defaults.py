"""Option values and defaults shared by the command line and the transforms.

Kept free of Beam and TensorFlow imports so that `bert-embed run --help` and option errors answer without loading
either (pipeline/options.py imports this, not the transforms that use the values).
"""

# transforms/embedding/embed_config.py: the packed length and the batch sizes of the tokenizer and the encoder.
DEFAULT_SEQ_LENGTH = 128
DEFAULT_BATCH_SIZE = 64
DEFAULT_PREPROCESS_BATCH_SIZE = 256

# runtime/buckets.py: the padded lengths encoder batches are bucketed into, and the padded tokens per batch.
DEFAULT_BUCKET_SPEC = "2-64,72-128/8"
DEFAULT_MAX_BATCH_TOKENS = 4096

# runtime/mlm_scoring.py: padded tokens per .mlm call.
DEFAULT_MLM_MAX_TOKENS = 8192

# snapshot/previous.py: records whose old and new vectors are compared when the model fingerprint changed.
DEFAULT_DRIFT_SAMPLE = 100

# transforms/duplicate_ids.py: what happens to records that share an id.
DUPLICATE_ID_POLICIES = ("dead-letter", "fail", "keep")
DEFAULT_DUPLICATE_ID_POLICY = "dead-letter"

# snapshot/checks.py: dead-lettered / read above which a run fails instead of replacing the earlier output. A messy
# corpus loses well under 1% of its records (bad encodings, empty or unparsable rows); a broken run (a wrong
# --id-field or --input-format, a file compressed twice) loses all of them, or the whole share of the inputs it
# misreads. 0.1 leaves a tenfold margin above the first and stops the second once a tenth of the corpus is affected.
DEFAULT_MAX_DEAD_LETTER_FRACTION = 0.1
