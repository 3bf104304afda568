"""Walking a model's futures on an engine: the stepping session and its tree of paths, beam search,
scores of positions, a second model reading the same path, and the logit lens."""
