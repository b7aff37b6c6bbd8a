"""Payloads for attack tests: a pickle that leaves a marker file when (and only when) it runs."""

from __future__ import annotations

import os
from pathlib import Path

SECRET = "QZX-SECRET-MARKER-7f3a"  # file content that no error message may ever quote


class Hostile:
    """Unpickling this runs ``touch MARKER``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))
