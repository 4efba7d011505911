"""Names the transforms share with each other and with pipeline/: spelled here once.

Kept free of Beam and TensorFlow imports (pipeline/progress.py reads the namespace back from a job's metrics).
"""

# Every Beam metric of the job is in this namespace (pipeline/progress.py queries it for the progress lines).
NAMESPACE = "bert_embed"

# The output tag of DeadLetter records, on every transform that splits them off its main output.
DEAD_LETTER = "dead_letters"
