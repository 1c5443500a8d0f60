import json
import logging
from pathlib import Path

from stockade.logs import REDACTOR, configure_logging


def test_logs_are_json_and_redacted(tmp_path: Path) -> None:
    path = configure_logging(tmp_path / "logs", "info")
    REDACTOR.register("planted-secret-4d1f")
    log = logging.getLogger("stockade.test")
    log.info("calling with token stk_abcdef123456_ZZZZZZZZZZZZZZZZ and %s", "planted-secret-4d1f")
    log.warning("header was Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig")
    try:
        raise RuntimeError("failed with planted-secret-4d1f")
    except RuntimeError:
        log.exception("boom")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text()
    assert "planted-secret-4d1f" not in text and "stk_abcdef" not in text and "eyJhbGci" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["level"] for e in entries] == ["info", "warning", "error"]
    assert "[redacted]" in entries[0]["message"] and "RuntimeError" in entries[2]["error"]
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
