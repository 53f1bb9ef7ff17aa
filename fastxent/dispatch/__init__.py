"""From a user's call to a backend's: the arrays of each library, the argument checks, the choice
of backend, and the GPU adapter (docs/design.md#layers)."""
