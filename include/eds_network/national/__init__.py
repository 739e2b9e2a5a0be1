"""Runs at the HDH (national zone): level-2 pseudonyms, the landing zone, receipts, national linkage."""
