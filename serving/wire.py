"""The wire contract every side shares: headers, log markers, media types, magic bytes, message limits."""

from __future__ import annotations

from typing import Final

# --- response headers the handler sets on every answer ------------------------------------------

CHECKPOINT_HEADER: Final = "x-ckptserve-checkpoint"  # which checkpoint produced the answer
# Instances in this batch's forward pass, as the ckptserve_batch_size metric counts them; the requests
# TorchServe grouped into the batch get their own header (one request may carry many instances).
BATCH_HEADER: Final = "x-ckptserve-batch-size"
BATCH_REQUESTS_HEADER: Final = "x-ckptserve-batch-requests"

# --- log markers --------------------------------------------------------------------------------

# The worker-log line the handler writes when its initialize() fails; `ckptserve serve` reads the reason
# after it (serving/torchserve/worker_log.py).
LOAD_ERROR_MARKER: Final = "ckptserve-load-error:"

# --- bodies -------------------------------------------------------------------------------------

JSON_TYPE: Final = "application/json"
NPY_TYPE: Final = "application/x-npy"
NPY_MAGIC: Final = b"\x93NUMPY"  # the first bytes of every .npy file: how an npy body is told from JSON

# --- gRPC ---------------------------------------------------------------------------------------

# TorchServe's own limit (max_request_size / max_response_size) is 6.5 MB by default; gRPC's
# default receive limit (4 MiB) would otherwise be the tighter one and fail with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
