"""BERT modeling in pure TensorFlow: config, encoder, preprocessor, importers, export.

Submodules are imported explicitly (e.g. `from modeling import export`); this package
itself imports nothing heavy so that `modeling.config` stays cheap to use.
"""
