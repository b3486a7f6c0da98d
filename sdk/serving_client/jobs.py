"""A handle to one job: ``status()`` asks now, ``wait()`` / ``result()`` long-poll until it finishes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from serving_client.errors import JobFailed, JobTimeout
from serving_client.models import JobState, JobStatus, ModelResult

if TYPE_CHECKING:
    from serving_client.client import Client

MAX_WAIT_S = 30.0  # the bridge holds a long poll at most this long
MIN_POLL_INTERVAL_S = 0.2  # pause when an answer came back early (e.g. a proxy dropped ?wait=)


class Job:
    """A submitted job. ``state`` is the last state seen; ``created`` is False for an idempotent replay."""

    def __init__(self, client: Client, state: JobState, created: bool = True) -> None:
        self._client = client
        self.state = state
        self.created = created

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state.status.value}>"

    @property
    def id(self) -> str:
        """The job's id."""
        return self.state.id

    @property
    def location(self) -> str:
        """The job's path on the bridge."""
        return f"/v1/jobs/{self.id}"

    def refresh(self, wait: float = 0.0) -> JobState:
        """Fetch the job (waiting up to ``wait`` seconds for it to finish) and remember its state."""
        self.state = self._client.fetch_job(self.id, wait=wait)
        return self.state

    def status(self) -> JobStatus:
        """The job's status now (a fresh request)."""
        return self.refresh().status

    def wait(self, timeout: float | None = 60.0) -> JobState:
        """Long-poll until the job succeeded or failed and return its final state.

        Raises ``JobTimeout`` (a ``TimeoutError``) when it is still pending after ``timeout`` seconds
        (None: wait for ever). A failed job is returned, not raised: see :meth:`result`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.state.status.finished:
            remaining = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(self.state, timeout if timeout is not None else 0.0)
            wait = min(MAX_WAIT_S, remaining)
            asked = time.monotonic()
            if self.refresh(wait=wait).status.finished:
                break
            early = wait - (time.monotonic() - asked)
            if early > wait / 2:
                time.sleep(min(MIN_POLL_INTERVAL_S, early))
        return self.state

    def result(self, timeout: float | None = 60.0) -> dict[str, ModelResult]:
        """Wait for the job and return one result per model (check each ``.ok``: a model may answer 4xx).

        Raises ``JobFailed`` when the job failed and ``JobTimeout`` when it is not finished in time.
        """
        state = self.wait(timeout)
        if state.status is JobStatus.FAILED:
            raise JobFailed(state)
        return dict(state.results or {})
