"""trace holder Process and its ProcessModels."""
