"""Talking to the TorchServe process: config.properties, model archives, launch, readiness, stop."""

from serving.torchserve.archive import build_archive
from serving.torchserve.config import (
    ServerSettings,
    distinct_free_ports,
    free_port,
    free_ports,
    render_properties,
)
from serving.torchserve.process import TorchServeProcess
from serving.torchserve.state import ServerState, ServerUrls, stop_from_state

__all__ = [
    "ServerSettings",
    "ServerState",
    "ServerUrls",
    "TorchServeProcess",
    "build_archive",
    "distinct_free_ports",
    "free_port",
    "free_ports",
    "render_properties",
    "stop_from_state",
]
