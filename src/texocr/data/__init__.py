"""Data: every source as one stream of `Sample(image, latex, id, meta)`, and the synthetic engine."""
