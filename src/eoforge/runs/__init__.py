"""The run layer: the pipeline and its stages (the only wing that sees a whole RunSpec)."""
