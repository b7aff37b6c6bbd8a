"""One file per reload strategy; ``serving.reload.strategy`` registers them."""
