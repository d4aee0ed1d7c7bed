"""phase neuron Process and its ProcessModels."""
