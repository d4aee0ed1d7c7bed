"""SpikeSource: plays back a (steps, *shape) tensor, one slice per step."""
