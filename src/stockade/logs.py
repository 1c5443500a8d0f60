"""Structured JSON logs with redaction, in bounded, rotated files.

Redaction happens in a logging filter, so every record is cleaned whatever logger wrote it
(uvicorn's included): token patterns, bearer credentials and every value registered as secret.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

_TOKEN_PATTERNS = re.compile(r"(stk_[A-Za-z0-9_-]{8,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,})")
REDACTED = "[redacted]"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        if len(value) >= 4:  # shorter values would redact ordinary words
            with self._lock:
                self._secrets.add(value)

    def redact(self, text: str) -> str:
        text = _TOKEN_PATTERNS.sub(REDACTED, text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


REDACTOR = Redactor()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_dir: Path, level: str) -> Path:
    """JSON lines to `log_dir/stockade.log` (rotated at 10 MiB, 5 kept) and stderr, all redacted."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = log_dir / "stockade.log"
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    stream_handler = logging.StreamHandler()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (file_handler, stream_handler):
        handler.setFormatter(JsonFormatter())
        handler.addFilter(REDACTOR)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # One line per upstream request (health polls included) is noise at info level.
    for name in ("httpx2", "httpcore2", "docker", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return path
