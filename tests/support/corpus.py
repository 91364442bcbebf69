"""The real-world payloads beside the repo (``../shared/corpus``): read in place, never copied.

Each file's origin, licence and edge case are in its ``SOURCES.md``. Tests
parametrize over what is there, so the corpus may grow; a test keeps a table
of expected outcomes by file name, and a file not in the table must still be
handled without an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OPENLINES_CORPUS_DIR: another copy of the corpus (one being collected, before it is added beside the repo).
CORPUS = Path(os.environ.get("OPENLINES_CORPUS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "corpus")


def corpus_files(kind: str, suffix: str) -> list[Path]:
    """The corpus files of one kind (``telegram``, ``vk``, ``email``, ``bitrix24``, ``whatsapp``); empty when absent."""
    folder = CORPUS / kind
    files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
    return files


def params(kind: str, suffix: str) -> list[object]:
    """pytest parameters, one per file, named by the file; one skipped parameter when the corpus is absent."""
    files = corpus_files(kind, suffix)
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no corpus at {CORPUS / kind}"), id="no-corpus")]
    return [pytest.param(f, id=f.name) for f in files]
