"""What a SQLite database's bytes hold: for erasure tests (secure_delete)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def file_holds(path: Path, text: str) -> bool:
    """Whether the database file or its WAL holds ``text``, after a full checkpoint."""
    connection = sqlite3.connect(path)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "a reader kept the checkpoint from finishing"
    finally:
        connection.close()
    wal = Path(f"{path}-wal")
    return any(text.encode() in file.read_bytes() for file in (path, wal) if file.exists())
