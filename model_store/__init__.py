"""Example models that ship with ckptserve (the demo's digits CNN); also a model-store folder in the repo."""
