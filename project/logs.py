"""JSON log lines (``RELAYBUS_LOG_JSON=true``): one object per line, with the workflow's ids.

Every record a worker logs becomes ``{"ts", "level", "logger", "message", "process", ...}``; a record
written while a task runs also carries ``task_id``, ``task``, ``agent``, ``correlation_id`` and
``causation_id``, so a log pipeline (Loki, Elasticsearch, CloudWatch) joins it to the event log and to the
other agents' lines of the same workflow. An exception is one ``"exception"`` string, not a multi-line
traceback. Off by default: Celery's text lines stay what operators of plain Celery know.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from celery import signals
from celery._state import get_current_task

from relaybus.settings import get_settings
from relaybus.topology import agent_of


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON, with the running task's ids when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        line.update(_task_fields())
        if record.exc_text:  # set, redacted, by relaybus's log filter (tasks.runtime.redacting)
            line["exception"] = record.exc_text
        elif record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _task_fields() -> dict[str, str]:
    from relaybus.tasks.runtime.context import current_causation_id, current_correlation_id

    task = get_current_task()
    if task is None or task.request is None or task.request.id is None:
        return {}
    fields = {"task_id": str(task.request.id), "task": str(task.name)}
    agent = agent_of(task.name or "")
    if agent:
        fields["agent"] = agent
    for key, value in (("correlation_id", current_correlation_id()), ("causation_id", current_causation_id())):
        if value:
            fields[key] = value
    return fields


def _use_json(logger: logging.Logger | None = None, **_: Any) -> None:
    """``after_setup_logger`` / ``after_setup_task_logger``: the handlers Celery set up write JSON."""
    if logger is None or not get_settings().log_json:
        return
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


def connect() -> None:
    signals.after_setup_logger.connect(_use_json, weak=False, dispatch_uid="relaybus.log_json")
    signals.after_setup_task_logger.connect(_use_json, weak=False, dispatch_uid="relaybus.log_json_task")
