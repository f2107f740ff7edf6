"""Launch, follow and abort a CLIP run from the tab, the way LLaMA Board runs its own training.

The arguments are written to ``<output_dir>/training_args.yaml`` and ``llamafactory-cli train`` runs them in a
child process with ``LLAMABOARD_ENABLED`` / ``LLAMABOARD_WORKDIR`` set, so LLaMA-Factory's ``LogCallback`` writes
``trainer_log.jsonl`` and ``running_log.txt`` there; the tab polls those files.
"""

import json
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from .locales import alert
from .options import ARGS_FILE, command


PROCESS_LOG = "webui_process.log"  # the child's stdout and stderr, shown when it fails (a `.log`: bookkeeping)
POLL_S = 1.0
ABORT_WINDOW_S = 10.0  # an Abort clicked this shortly before a launch (while Start was validating) cancels it


@dataclass
class Status:
    """What the tab shows while a run goes and once it ends."""

    message: str
    percentage: float | None = None
    progress_label: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    done: bool = False


def stop_process_tree(pid: int, grace_s: float = 10.0) -> None:
    """Terminate a process and every descendant (torchrun workers, loader workers), then kill what remains. A child
    started in its own session (``launch`` does that) is also stopped through its process group, which catches
    processes spawned after the snapshot of descendants."""
    try:
        root = psutil.Process(pid)
        processes = root.children(recursive=True) + [root]
        group = os.getpgid(pid) if os.getpgid(pid) == pid else None
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    _signal(processes, group, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    _signal(alive, group, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace_s)


def _signal(processes: list[psutil.Process], group: int | None, sig: int) -> None:
    if group is not None:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def read_trainer_log(output_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(output_dir, "trainer_log.jsonl")
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                break
    return entries


def tail(path: str, lines: int) -> str:
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


class ClipRunner:
    """One run at a time per web UI process, as LLaMA Board does."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.output_dir: str | None = None
        self.form: dict[str, Any] | None = None  # the running job's form, shown again to a reloaded page
        self.aborted = False
        self.abort_time = -math.inf
        self.lock = threading.Lock()  # two clicks on Start never launch two runs

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(
        self, args: dict[str, Any], lang: str, busy: bool = False, form: dict[str, Any] | None = None
    ) -> Iterator[Status]:
        """``busy``: LLaMA Board's own runner is training; one run at a time on the machine. An Abort clicked while
        Start was still validating, or while the child starts, stops it."""
        with self.lock:
            if self.running or busy:
                yield Status(alert("running", lang), done=True)
                return
            if self.aborted and time.monotonic() - self.abort_time < ABORT_WINDOW_S:
                self.aborted = False
                yield Status(alert("aborted", lang), done=True)
                return
            self.aborted = False
            output_dir = self.output_dir = args["output_dir"]
            text, argv = command(args)
            try:
                os.makedirs(output_dir, exist_ok=True)
                for path in (os.path.join(output_dir, ARGS_FILE), argv[-1]):  # the record, and the launched copy
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(text)
                for stale in ("trainer_log.jsonl", "all_results.json"):  # a resumed run must not show the last end
                    if os.path.isfile(os.path.join(output_dir, stale)):
                        os.remove(os.path.join(output_dir, stale))
                env = dict(os.environ, LLAMABOARD_ENABLED="1", LLAMABOARD_WORKDIR=output_dir)
                with open(os.path.join(output_dir, PROCESS_LOG), "w", encoding="utf-8") as log:
                    self.process = subprocess.Popen(
                        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                self.form = form
            except OSError as err:  # an unwritable output dir, or no llamafactory-cli on PATH
                yield Status(alert("invalid", lang, err), done=True)
                return
            if self.aborted:  # clicked while the child was starting
                stop_process_tree(self.process.pid)
        yield Status(alert("started", lang, shlex.join(argv)), percentage=0.0)
        yield from self.follow(output_dir, lang)

    def reattach(self, lang: str) -> Iterator[Status]:
        """A page opened (or reloaded) while a run goes on follows it too, as LLaMA Board's ``resume`` does."""
        if self.running:
            yield from self.follow(self.output_dir, lang)

    def follow(self, output_dir: str, lang: str) -> Iterator[Status]:
        process = self.process
        while process.poll() is None:
            time.sleep(POLL_S)
            if self.aborted:
                yield Status(alert("aborting", lang))
                continue
            yield self._progress(output_dir)
        yield self._final(output_dir, process.returncode, lang)

    def abort(self) -> None:
        self.aborted = True
        self.abort_time = time.monotonic()
        if self.running:
            stop_process_tree(self.process.pid)

    def _progress(self, output_dir: str) -> Status:
        entries = read_trainer_log(output_dir)
        log = tail(os.path.join(output_dir, "running_log.txt"), 20)
        losses = [(e["current_steps"], e["loss"]) for e in entries if e.get("loss") is not None]
        if not entries:
            return Status(f"```\n{log}\n```" if log else "…", percentage=0.0, losses=losses)
        last = entries[-1]
        label = (
            f"{last['current_steps']}/{last['total_steps']}: "
            f"{last.get('elapsed_time', '')} < {last.get('remaining_time', '')}"
        )
        return Status(f"```\n{log}\n```", last.get("percentage", 0.0), label, losses)

    def _final(self, output_dir: str, returncode: int, lang: str) -> Status:
        status = self._progress(output_dir)
        status.done = True
        finished = returncode == 0 and os.path.isfile(os.path.join(output_dir, "all_results.json"))
        if self.aborted and not finished:  # an abort that came after the run ended changes nothing
            status.message = alert("aborted", lang)
            return status
        if returncode != 0:
            status.message = (
                alert("failed", lang, returncode, PROCESS_LOG)
                + f"\n```\n{tail(os.path.join(output_dir, PROCESS_LOG), 30)}\n```"
            )
            return status
        results = os.path.join(output_dir, "all_results.json")
        if os.path.isfile(results):
            with open(results, encoding="utf-8") as f:
                status.metrics = {k: v for k, v in json.load(f).items() if k.startswith(("eval_", "tip_"))}
        status.percentage = 100.0
        status.message = alert("finished", lang, os.path.abspath(output_dir))
        return status
