"""Curation scorers: one per file, each with the same calling shape."""
