"""Bound the pickled part of a torch.save file before any unpickler builds objects from it.

Even torch's weights-only unpickler builds what the pickle describes: a one-byte opcode can make a
64-byte empty dict, so a 2 MB pickle costs ~150 MB of memory and a few hundred MB of them would
kill the worker. A state dict's pickle needs a few hundred bytes per tensor (the tensors' bytes are
stored beside it), so a cap far above real checkpoints bounds that amplification.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

from serving.errors import CorruptCheckpointError
from serving.files import open_regular

MAX_PICKLE_BYTES = 32 << 20  # ~100k tensors' worth of state-dict pickle; real ones are kilobytes to a few MB
# A legacy (pre-1.6) file is five pickles in a row (magic, version, system info, the object, the
# storage keys), then the raw storages.
_LEGACY_PICKLES = 5


def check_pickle_size(path: Path, size: int) -> None:
    """Raise ``CorruptCheckpointError`` when ``size`` (bytes of pickle in ``path``) passes the cap."""
    limit = MAX_PICKLE_BYTES
    if size > limit:
        raise CorruptCheckpointError(
            f"{str(path)!r} holds a pickle of more than {limit >> 20} MiB beside its tensors; a "
            "state dict's is kilobytes. Unpickling it could take many times that in memory.",
            hint="Save model.state_dict() (tensors, with small metadata), not large Python objects.",
        )


def zip_pickle_size(path: Path) -> int:
    """The inflated size of a torch.save zip's data.pkl, from its directory."""
    with open_regular(path) as fh, zipfile.ZipFile(fh) as archive:
        return sum(e.file_size for e in archive.infolist() if e.filename.endswith("/data.pkl"))


def legacy_pickle_size(path: Path) -> int:
    """How far a legacy file's pickles reach, walked opcode by opcode; stops past ``MAX_PICKLE_BYTES``."""
    # Nothing is built; stop as soon as the limit is passed.
    with open_regular(path) as fh:
        try:
            for _ in range(_LEGACY_PICKLES):
                for _op in pickletools.genops(fh):
                    if fh.tell() > MAX_PICKLE_BYTES:
                        return fh.tell()
        except (ValueError, EOFError):  # damaged: torch's reader says so, with its own typed error
            pass
        return fh.tell()
