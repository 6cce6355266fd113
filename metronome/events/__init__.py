"""Documents: field names, tick validation and enrichment. No I/O here."""
