"""Exec a peer's worker: `python -m bench.peers.launch <module> <index> <variant>`."""

from __future__ import annotations

import importlib
import os
import sys

if __name__ == "__main__":
    module, index, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    argv = importlib.import_module(f"bench.peers.{module}_bench").worker_argv(sys.executable, index, variant)
    os.execv(argv[0], argv)
