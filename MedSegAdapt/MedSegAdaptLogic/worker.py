"""Long work off the GUI thread: a :class:`Job`, one persistent :class:`Worker` thread running jobs in
order (the model stays on it), and :class:`Processing`, the module's one-job-at-a-time state.

No Qt: the widget polls :meth:`Processing.poll` with a QTimer and never touches MRML from the worker.
No MedSegAdaptLib import either, so this runs before the library's dependencies are installed.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Job", "Processing", "SegmentationCancelled", "Worker", "progress_text"]

logger = logging.getLogger("MedSegAdapt")

#: The library's progress callback: ``progress(stage, done, total)``.
ProgressCallback = Callable[[str, int, int], None]


class SegmentationCancelled(Exception):
    """Raised from a progress callback to stop running work."""


class Job:
    """One piece of work for :class:`Worker`: state, progress, result or error, and a cancel flag.

    ``state`` goes 'queued' -> 'running' -> 'done' | 'failed' | 'cancelled'.
    """

    def __init__(self, function: Callable[[ProgressCallback], Any], description: str = "") -> None:
        self.function = function
        self.description = description
        self.state = "queued"
        self.stage, self.done, self.total = "queued", 0, 0
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._finished = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def progress(self, stage: str, done: int, total: int) -> None:
        """The library's progress callback: records progress and raises once cancel was asked for."""
        self.stage, self.done, self.total = stage, int(done), int(total)
        if self._cancel.is_set():
            raise SegmentationCancelled(f"{self.description or 'work'} cancelled")

    def _run(self) -> None:
        if self._cancel.is_set():
            self.state = "cancelled"
            self._finished.set()
            return
        self.state = "running"
        try:
            self.result = self.function(self.progress)
            self.state = "done"
        except SegmentationCancelled as error:
            self.error, self.state = error, "cancelled"
        except BaseException as error:  # reported to the GUI thread, which shows it
            self.error, self.state = error, "failed"
            logger.exception("MedSegAdapt: %s failed", self.description or "work")
        finally:
            self._finished.set()


class Worker:
    """One persistent background thread running :class:`Job`s in order (the model stays on it)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="MedSegAdaptWorker", daemon=True)
        self._thread.start()

    def submit(self, function: Callable[[ProgressCallback], Any], description: str = "") -> Job:
        job = Job(function, description)
        self._queue.put(job)
        return job

    def stop(self, timeout: float | None = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job._run()


def progress_text(stage: str, done: int, total: int) -> str:
    """'Encoding slices 12/34' style label for a progress stage of the library."""
    names = {"queued": "Waiting", "loading": "Loading model", "encoding slices": "Encoding slices",
             "propagating": "Propagating", "writing": "Writing segment", "locating": "Locating the report's candidates"}
    if stage.startswith("fine-tuning epoch "):  # the trainer's "fine-tuning epoch 2/10", done/total steps
        epoch = stage.removeprefix("fine-tuning epoch ")
        return f"Epoch {epoch}, step {done}/{total}" if total else f"Epoch {epoch}"
    label = names.get(stage, stage.replace("_", " ").capitalize())
    return f"{label} {done}/{total}" if total else label


class Processing:
    """The module's processing state: at most one job of one kind (segment, suggest, finetune, ...) at a time.

    :meth:`stop` with ``abandon=True`` (Cancel of a segmentation or of suggestions, a scene close)
    acts at once: the job is asked to stop, the state is idle again, and the job's result, whenever
    the worker gets to the end of it (model loading and ONNX export report no progress), is dropped,
    so it never writes into the scene. Without ``abandon`` (Stop of fine-tuning) the job keeps its
    place until it reaches its next progress report, so its "stopped" result (the last completed
    epoch) is still reported.
    """

    def __init__(self) -> None:
        self._worker: Worker | None = None
        self.kind: str | None = None
        self.job: Job | None = None
        self.context: Any = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def start(self, kind: str, function: Callable[[ProgressCallback], Any], description: str = "",
              context: Any = None) -> Job:
        """Queue ``function(progress)`` on the worker as the current job of ``kind``."""
        if self.busy:
            raise RuntimeError(f"cannot start {description or kind}: {self.job.description or self.kind} is running")
        if self._worker is None or not self._worker.alive:
            self._worker = Worker()
        self.job = self._worker.submit(function, description)
        self.kind, self.context = kind, context
        return self.job

    def stop(self, abandon: bool = False) -> tuple[str | None, Any]:
        """Ask the current job to stop; with ``abandon``, forget it now. Returns (kind, context) of the job."""
        kind, context = self.kind, self.context
        if self.job is not None:
            self.job.cancel()
            if abandon:
                self._clear()
        return kind, context

    def poll(self) -> tuple[str, Job, Any] | None:
        """(kind, job, context) once the current job has finished (the state is then idle), else None."""
        job = self.job
        if job is None or not job.finished:
            return None
        finished = (self.kind, job, self.context)
        self._clear()
        return finished

    def shutdown(self, timeout: float | None = 1.0) -> None:
        """Abandon the current job and stop the worker thread (module cleanup)."""
        self.stop(abandon=True)
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = None

    def _clear(self) -> None:
        self.job = self.kind = self.context = None
