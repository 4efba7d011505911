"""A run's output as a versioned snapshot: manifest, LATEST, staging, checks, commit; no Beam steps."""
