"""The store under SIGKILL at random moments and with two processes submitting at once.

Run as a script, this file is a small fork server: it imports the library once, then forks one
submitter process per request, so that each of the many killed submitters starts in milliseconds
rather than paying the library's import time. Submitters write ``ok {json}`` to stdout only after
``submit_segmentation`` returned, i.e. after the commit.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MedSegAdaptLib.io import (
    Segment,
    Segmentation,
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    read_segmentation,
    read_volume,
)
from MedSegAdaptLib.store import FineTuningStore

CASE = "CTChest4"
STRUCTURES = ("right lung", "left lung")  # submitted together: both versions commit or neither
KILLS = 60
MAX_DELAY_S = 0.25  # a submission takes tens of milliseconds: kills land in every phase of it


def variant(reference: Segmentation, structure: str, n: int) -> np.ndarray:
    """The reference mask with slice ``n % K`` inverted: a different label for each nearby ``n``."""
    mask = reference.get(structure).mask.copy()
    k = n % mask.shape[2]
    mask[:, :, k] = ~mask[:, :, k]
    return mask


# --- the fork server (this file run as a script) -------------------------------------------------


def _submitter(root: str, tag: str, count: int, go: str, reference: Segmentation) -> None:
    """Once file ``go`` exists, submit ``count`` times (forever if negative), confirming each."""
    while not os.path.exists(go):
        time.sleep(0.001)
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
    store = FineTuningStore(root)
    for n in itertools.count() if count < 0 else range(count):
        token = f"{tag}-{n}"
        masks = [Segment(name, variant(reference, name, n)) for name in STRUCTURES]
        labels = store.submit_segmentation(
            CASE, Segmentation(reference.geometry, masks), annotator=tag, comment=token
        )
        confirmed = {
            "tag": tag,
            "token": token,
            "n": n,
            "versions": {label.structure: label.version for label in labels},
            "started": started,
            "time": time.monotonic(),
        }
        os.write(1, f"ok {json.dumps(confirmed)}\n".encode())


def _serve() -> None:
    """Read 'fork STORE TAG COUNT GO' / 'wait PID' lines; answer 'pid TAG PID' / 'exit PID STATUS'."""
    # Imported before forking, so that no submitter pays for it: the diff to the prediction
    # computes Dice with the metrics module, which loads torch and MONAI.
    import MedSegAdaptLib.evaluation.metrics  # noqa: F401

    reference = read_segmentation(ctchest4_segmentation_path())
    os.write(1, b"ready\n")
    for line in sys.stdin:
        command, *arguments = line.split()
        if command == "fork":
            root, tag, count, go = arguments
            pid = os.fork()
            if pid == 0:
                try:
                    _submitter(root, tag, int(count), go, reference)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            os.write(1, f"pid {tag} {pid}\n".encode())
        elif command == "wait":
            pid = int(arguments[0])
            _, status = os.waitpid(pid, 0)
            os.write(1, f"exit {pid} {status}\n".encode())


class ForkServer:
    """Drives ``_serve`` in a subprocess and collects the submitters' ``ok`` lines."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.confirmed: list[dict] = []
        self._expect("ready")

    def _expect(self, prefix: str) -> list[str]:
        while True:
            line = self.process.stdout.readline()
            assert line, f"fork server ended while waiting for {prefix!r}"
            if line.startswith("ok "):
                self.confirmed.append(json.loads(line[3:]))
            elif line.startswith(prefix):
                return line.split()

    def _send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def fork(self, root: Path, tag: str, count: int, go: Path) -> int:
        """Start a submitter of ``count`` submissions (-1: until killed) once file ``go`` exists."""
        self._send(f"fork {root} {tag} {count} {go}")
        return int(self._expect(f"pid {tag} ")[2])

    def wait(self, pid: int) -> int:
        """Exit status (as os.waitpid gives it) of submitter ``pid``, once its ``ok`` lines are read."""
        self._send(f"wait {pid}")
        return int(self._expect(f"exit {pid} ")[2])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server() -> ForkServer:
    started = ForkServer()
    yield started
    started.close()


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Segmentation]:
    """A store with CTChest4 and the real segmentation as its prediction; the reference segmentation."""
    root = tmp_path / "store"
    with FineTuningStore.init(root) as store:
        store.add_image(ctchest4_volume_path())
        store.add_prediction(CASE, ctchest4_segmentation_path())
    return root, read_segmentation(ctchest4_segmentation_path())


def check_confirmed(store: FineTuningStore, confirmed: list[dict], reference: Segmentation) -> None:
    """Every confirmed submission is in the store, both structures, with the submitted voxels."""
    by_token: dict[str, dict[str, object]] = {}
    for name in STRUCTURES:
        history = store.history(CASE, name)
        assert [label.version for label in history] == list(range(1, len(history) + 1))
        for label in history[1:]:
            by_token.setdefault(label.comment, {})[name] = label
    # All or nothing: no submission left only one of its two structures behind.
    assert all(len(labels) == len(STRUCTURES) for labels in by_token.values())
    for submission in confirmed:
        labels = by_token[submission["token"]]
        for name in STRUCTURES:
            assert labels[name].version == submission["versions"][name]
            stored = read_volume(labels[name].file).array != 0
            assert np.array_equal(stored, variant(reference, name, submission["n"])), submission


def test_sigkill_at_random_moments_loses_no_confirmed_submission(server: ForkServer, prepared):
    root, reference = prepared
    server.confirmed.clear()
    go = root.parent / "go"
    go.touch()
    rng = random.Random(20240611)
    for round_index in range(KILLS):
        pid = server.fork(root, f"kill{round_index:02d}", -1, go)
        time.sleep(rng.uniform(0.0, MAX_DELAY_S))
        os.kill(pid, signal.SIGKILL)
        status = server.wait(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

    with FineTuningStore(root) as store:
        report = store.verify()
        assert report.ok, report.problems
        # Kills between a file's rename and the manifest commit leave complete, unrecorded files.
        assert report.leftovers, "no kill landed inside a write: the test did not test anything"
        print(
            f"{KILLS} kills, {len(server.confirmed)} confirmed submissions, {len(report.leftovers)} leftovers"
        )
        check_confirmed(store, server.confirmed, reference)
        assert len(server.confirmed) >= KILLS // 4
        repaired = store.verify(repair=True)
        assert repaired.ok and repaired.removed == report.leftovers
        assert store.verify().leftovers == []
        # The store stays usable: the next submission gets the next version.
        before = len(store.history(CASE, STRUCTURES[0]))
        label = store.submit_mask(CASE, STRUCTURES[0], reference.get(STRUCTURES[0]).mask, "after")
        assert label.version == before + 1


def test_two_processes_submitting_at_once_lose_nothing(server: ForkServer, prepared):
    root, reference = prepared
    server.confirmed.clear()
    go = root.parent / "go"
    per_process = 12
    pids = [server.fork(root, tag, per_process, go) for tag in ("alpha", "beta")]
    go.touch()  # both start together
    statuses = [server.wait(pid) for pid in pids]
    assert statuses == [0, 0]
    assert len(server.confirmed) == 2 * per_process

    with FineTuningStore(root) as store:
        assert store.verify().ok and store.verify().leftovers == []
        check_confirmed(store, server.confirmed, reference)
        assert len(store.history(CASE, STRUCTURES[0])) == 1 + 2 * per_process
    # Both were submitting at the same time: each started before the other's last confirmation.
    started = [max(c["started"] for c in server.confirmed if c["tag"] == tag) for tag in ("alpha", "beta")]
    finished = [max(c["time"] for c in server.confirmed if c["tag"] == tag) for tag in ("alpha", "beta")]
    assert max(started) < min(finished)


if __name__ == "__main__":
    _serve()
