"""Resolving, identifying and staging models: flags, Hugging Face names, fingerprints (README "Layout")."""
