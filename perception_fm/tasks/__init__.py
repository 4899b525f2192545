"""Per-task model protocols: what a node expects from the object a plugin's ModelSpec.create returns."""
