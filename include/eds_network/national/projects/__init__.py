"""Research projects at the HDH: feasibility counts, project datasets under project pseudonyms, expiry, withdrawal."""
