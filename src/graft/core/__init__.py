"""The Keras mechanism: backbone registry and loaders, blocks, preprocessing layers,
model assembly, freezing, the optimizer factory, regularisers and schedules."""
