"""woss inhibitor Process and its ProcessModels."""
