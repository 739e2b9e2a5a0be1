"""Revisions, oldest first: `NNNN_<slug>.py`, each `down_revision` the previous one."""
