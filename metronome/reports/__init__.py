"""Backend-neutral reports: what to count, over which time range, in which buckets."""
