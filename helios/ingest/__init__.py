"""Ingest: request bodies to normalised Arrow tables (one schema, checked once)."""
