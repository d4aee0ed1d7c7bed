"""trace matmul Process and its ProcessModels."""
