"""delay line Process and its ProcessModels."""
