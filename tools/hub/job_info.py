"""What the Hub says of a job, read into typed models; a malformed answer is a named error.

The Hub's ``JobInfo`` is an answer from outside: its labels, command and volumes are read
field by field, and anything of the wrong shape is ``hub_bad_response``, never a
traceback. Apart from the calls (``jobs_api``) because submit, status, find and cancel all
read a job the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunestep.tools.core.errors import TunestepError

TERMINAL_STAGES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})


class _HfJob(BaseModel):
    """What the Hub says of any job, submitted just now or looked up later."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    namespace: str
    url: str
    stage: str
    message: str | None = None
    flavor: str | None = None
    created_at: datetime | None = None


class HfJobRef(_HfJob):
    """A submitted job: where to find it. Never carries secrets or environment."""

    repo_id: str
    revision: str


class HfJobStatus(_HfJob):
    """Where a job is now; ``terminal`` once it can no longer change."""

    terminal: bool
    started_at: datetime | None = None
    finished_at: datetime | None = None
    running_seconds: int | None = None
    labels: dict[str, str] = {}
    revision: str | None = None  # the pinned revision of its first mounted repo
    image: str | None = None
    command: list[str] | None = None  # command and arguments, as the Hub runs them
    volume: str | None = None  # "<repo>:<path>" of its first mounted repo


class HfJobLogs(BaseModel):
    """The job's log lines available now (the last ``tail`` when given)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    lines: list[str]
    tail: int | None = None


def _stage(stage: Any) -> str:
    return getattr(stage, "value", stage)


def job_fields(job: Any) -> dict[str, Any]:
    """The fields every _HfJob takes from the client's JobInfo, read one way for both
    (an enum's value, not its repr, for the stage and the flavor)."""
    return {"job_id": job.id, "namespace": job.owner.name, "url": job.url,
            "stage": str(_stage(job.status.stage)), "message": job.status.message,
            "flavor": str(_stage(job.flavor)) if job.flavor else None,
            "created_at": job.created_at}


def _hub_labels(value: Any) -> dict[str, str]:
    """A job's labels as the Hub answered them: an object of strings, or a named error
    (a list, say, is a malformed answer, never a traceback)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TunestepError("hub_bad_response", "the Hub answered a job's labels as "
                            f"{type(value).__name__}, not an object of strings")
    return dict(value)


def _hub_command(job: Any) -> list[str] | None:
    command = getattr(job, "command", None)
    arguments = getattr(job, "arguments", None) or []
    if command is None:
        return None
    if not isinstance(command, list) or not isinstance(arguments, list) or not all(
            isinstance(a, str) for a in [*command, *arguments]):
        raise TunestepError("hub_bad_response", "the Hub answered a job's command as "
                            "something other than a list of strings")
    return [*command, *arguments]


def status_of(job: Any) -> HfJobStatus:
    try:
        stage = str(_stage(job.status.stage))
        durations = getattr(job, "durations", None)
        volume = next((v for v in getattr(job, "volumes", None) or []
                       if getattr(v, "revision", None)), None)
        return HfJobStatus(
            **job_fields(job),
            terminal=stage in TERMINAL_STAGES,
            started_at=getattr(job, "started_at", None),
            finished_at=getattr(job, "finished_at", None),
            running_seconds=durations.running_secs if durations else None,
            labels=_hub_labels(getattr(job, "labels", None)),
            revision=volume.revision if volume is not None else None,
            image=getattr(job, "docker_image", None),
            command=_hub_command(job),
            volume=f"{volume.source}:{volume.path or ''}" if volume is not None else None,
        )
    except TunestepError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # pydantic's too
        raise TunestepError("hub_bad_response", "the Hub's answer about a job is malformed "
                            f"({type(exc).__name__})") from None
