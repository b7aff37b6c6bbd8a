"""The app layer: the ``ckptserve`` command and its demo, thin callers of the core and the runtime."""
