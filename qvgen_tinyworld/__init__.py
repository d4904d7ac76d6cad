"""The tiny video world: a procedural text-to-video dataset, its prompt grammar, a fixed text
encoder and the trained tiny Wan teacher that the project embeds as its default model."""
