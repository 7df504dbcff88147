"""Models composed from the fused ops; ``talkie`` is a drop-in for mlx-lm's."""
