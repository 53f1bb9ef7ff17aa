"""The losses and statistics of the public API, assembled from the backends' kernels
(docs/design.md#layers)."""
