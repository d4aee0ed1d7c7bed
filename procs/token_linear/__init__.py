"""token linear Process and its ProcessModels."""
