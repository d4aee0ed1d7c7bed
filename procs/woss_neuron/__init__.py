"""woss neuron Process and its ProcessModels."""
