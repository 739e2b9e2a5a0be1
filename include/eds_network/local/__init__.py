"""Runs at the hospital, on the hospital's own workers: extract, check, pseudonymise (level 1), publish to the intake."""
