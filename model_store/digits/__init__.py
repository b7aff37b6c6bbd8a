"""The demo model: a small CNN for scikit-learn's 8x8 digits, its config, labels and training script."""
