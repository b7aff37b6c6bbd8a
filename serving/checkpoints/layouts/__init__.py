"""One descriptor per checkpoint layout (a file each); ``serving.checkpoints.layout`` registers them."""
