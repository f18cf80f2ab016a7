"""The run layer: the pipeline and its stages (data / model / report), store keys and integrity,
provenance, the report, per-scene fan-out and `eoforge predict`; the only wing that sees a
whole RunSpec."""
