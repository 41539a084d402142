"""JSON log lines carry the call id as a field."""

from __future__ import annotations

import io
import json
import logging

from parley.freeswitch.call import CallLog
from parley.observe.logs import JsonFormatter


def test_json_lines_carry_the_call_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("parley.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    CallLog(logger, {"call": "b8176bcb-105f-470a-94d0-a5c506ed4e11"}).info("hung up: %s", "NORMAL_CLEARING")
    entry = json.loads(stream.getvalue())
    assert entry["call"] == "b8176bcb-105f-470a-94d0-a5c506ed4e11"
    assert entry["msg"].endswith("hung up: NORMAL_CLEARING") and entry["level"] == "INFO"
