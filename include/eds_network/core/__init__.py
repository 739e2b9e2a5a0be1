"""Used by every zone: configuration, OMOP model, errors, object storage, keys, what zones exchange, the COPY reader."""
