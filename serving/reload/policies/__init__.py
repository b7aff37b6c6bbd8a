"""One file per reload policy; ``serving.reload.policy`` registers them."""
