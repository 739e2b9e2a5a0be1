"""Runs at the mutualised platform: verify members' batches, consolidate, standardise, link, package for the HDH."""
