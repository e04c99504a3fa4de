"""Batch captioning: the `caption` command, its job folders, image listing and Ray Data jobs."""
