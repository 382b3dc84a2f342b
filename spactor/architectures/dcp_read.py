"""Reading tensors from a ``torch.distributed.checkpoint`` (DCP) directory in one process.

Rank 0 reads checkpoints on its own while the other ranks wait elsewhere (downstream
evaluation, the FLOPs count building a Fast-ELECTRA generator), and ``spactor export``
reads them with no process group at all. A plain ``dcp.load`` runs collectives on the
default group whenever one exists, so a read on one rank would wait for the others
forever; this one never communicates.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp


def read_dcp_locally(state: dict[str, Any], path: str | Path) -> None:
    """Fill ``state`` (whole tensors, the keys to read) from the DCP directory ``path``,
    in this process alone; only the keys asked for are read."""
    with warnings.catch_warnings():  # DCP warns that it runs without a process group
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed")
        if "no_dist" in inspect.signature(dcp.load).parameters:
            dcp.load(state, checkpoint_id=path, no_dist=True)
        else:  # torch < 2.7: only the private loader takes no_dist
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

            _load_state_dict(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
