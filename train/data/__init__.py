"""Training data: the synthetic world (see synthetic_world.py)."""
