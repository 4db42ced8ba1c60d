"""Target adapters: weight tables a chip loads, one module per target, each with its reader."""
