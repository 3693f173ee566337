"""Replication through the shared store: the shared manifest protocol, uploader and puller."""
