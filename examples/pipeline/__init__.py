"""An example pipeline in the spirit of the users' own: preprocess → train (two models) → evaluate."""
