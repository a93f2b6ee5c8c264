"""Train several models at once, one worker process each (``--jobs N`` of study, compare and frontier).

The small networks of a study use two CPU cores better as two processes than as two threads of one
(``benchmarks/run.py --only jobs`` measures the ratio). :func:`train_many` trains a list of run folders,
the longest first, at most ``n_jobs`` at a time; each worker runs :func:`nonnormal.train.train` on its
folder (``resume`` when the folder exists, as the sequential loop does) with an equal share of the
parent's threads, and the parent shows one progress bar over all steps.

Stopping keeps every run resumable, as one ``nonnormal train`` does:

- SIGTERM, SIGINT or SIGUSR1 to the parent is passed on to the running workers as SIGTERM: each
  writes a checkpoint and stops, and the parent raises :class:`~nonnormal.errors.Stopped`.
- A worker whose parent died (kill -9) sends itself SIGTERM within a second: it checkpoints and stops.
- A worker killed outright (kill -9, the OOM killer) keeps its last periodic checkpoint; the parent
  stops the others and raises :class:`~nonnormal.errors.Stopped` that names it.
- An error in a worker (a full disk, a folder that is a file) stops the others and is raised in the
  parent as the same exception (a bug's traceback comes along in the message).

Workers run in their own session, so a terminal's Ctrl-C reaches only the parent, which passes it on once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .errors import NonnormalError, Stopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@dataclass
class Job:
    """One model to train: a label for messages, its run config and its run folder."""

    label: str
    cfg: dict
    run: Path


def check_jobs(jobs) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise NonnormalError(f"--jobs must be an integer in 1..64 (models trained at once), got {jobs!r}")
    return jobs


def train_many(jobs_list: list[Job], n_jobs: int = 1, progress: bool = True, log=print) -> None:
    """Train every job's run folder (resuming an existing one); ``n_jobs`` worker processes at a time.

    With ``n_jobs > 1`` the workers are started with ``spawn``: a script that calls this (or a ``Study``,
    ``compare`` or frontier with ``n_jobs > 1``) must guard its entry point with ``if __name__ == "__main__":``.

    ``n_jobs = 1`` trains them one after another in this process (its own progress bar per model)."""
    from .train import train

    check_jobs(n_jobs)
    todo = list(jobs_list)
    if n_jobs == 1 or len(todo) <= 1:
        for i, job in enumerate(todo, 1):
            log(f"[train {i}/{len(todo)}] {job.label} ({job.cfg['train']['steps']} steps)")
            train(job.cfg, job.run, resume=job.run.exists(), progress=progress)  # an interrupted job continues
        return
    _Pool(todo, n_jobs, progress, log).run()


def _worker(cfg: dict, run: str, threads: int, parent: int, steps, index: int, conn) -> None:
    """One model in a worker process: train it, report ("ok", state) or ("error", exception) on ``conn``."""
    os.setsid()  # Ctrl-C in a terminal reaches the parent only; it passes a stop on as SIGTERM
    import pickle

    import torch

    torch.set_num_threads(threads)

    def watch() -> None:  # an orphan (its parent killed) stops as a signalled training does
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True).start()

    def count(step: int, row: dict) -> None:
        steps[index] = step

    from .train import train

    try:
        state = train(cfg, Path(run), resume=Path(run).exists(), progress=False, callbacks=[count])
        steps[index] = state["step"]
        message = ("ok", state)
    except BaseException as err:  # noqa: BLE001 -- every failure goes back to the parent
        if isinstance(err, KeyboardInterrupt):  # a second SIGINT sent to the worker itself: a stop, not a bug
            err = Stopped(f"training {run} interrupted by a second SIGINT")
        if isinstance(err, (NonnormalError, OSError)):
            try:
                message = ("error", pickle.dumps(err))
            except Exception:  # noqa: BLE001
                message = ("error", pickle.dumps(NonnormalError(str(err))))
        else:
            text = "".join(traceback.format_exception(err)).rstrip()
            message = ("bug", text)
    try:
        conn.send(message)
    except OSError:
        pass  # the parent is gone: the checkpoint is what matters
    finally:
        conn.close()


class _Pool:
    """The parent's side: start workers (longest first), watch them, pass stops on, raise the first failure."""

    def __init__(self, todo: list[Job], jobs: int, progress: bool, log):
        import torch

        self.todo = sorted(todo, key=lambda j: -int(j.cfg["train"]["steps"]))  # longest first: the shortest end
        self.progress, self.log = progress, log
        self.jobs = min(jobs, len(self.todo))  # no more workers than models: their share of threads is larger
        self.threads = max(1, torch.get_num_threads() // self.jobs)
        self.ctx = multiprocessing.get_context("spawn")
        self.steps = self.ctx.Array("q", len(self.todo), lock=False)
        self.running: dict[int, tuple] = {}  # index -> (process, connection)
        self.stop_signal: int | None = None
        self.failure: BaseException | None = None
        self.stopped: list[str] = []
        self.told: set[int] = set()  # pids already sent SIGTERM (each is told once)
        self.bar = None

    def _handle(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the workers were told to stop)
        self.stop_signal = self.stop_signal or signum
        self._tell_workers()

    def _tell_workers(self) -> None:
        for proc, _ in self.running.values():
            if proc.is_alive() and proc.pid not in self.told:
                self.told.add(proc.pid)
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _start(self, i: int) -> None:
        job = self.todo[i]
        here, there = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker,
            args=(job.cfg, str(job.run), self.threads, os.getpid(), self.steps, i, there),
            name=f"nonnormal-train-{job.label}",
        )
        proc.start()
        there.close()
        self.running[i] = (proc, here)
        if self.stop_signal or self.failure:  # a stop that came while it was being started
            self._tell_workers()
        if self.bar is not None:
            self.bar.clear()  # the line goes above the bar, not after it on the same terminal row
        self.log(f"[train {i + 1}/{len(self.todo)}] {job.label} ({job.cfg['train']['steps']} steps, worker {proc.pid})")
        if self.bar is not None:
            self.bar.refresh()

    def _finish(self, i: int) -> None:
        import pickle

        proc, conn = self.running.pop(i)
        message = None
        try:
            if conn.poll():
                message = conn.recv()
        except (EOFError, OSError):
            message = None
        conn.close()
        proc.join()
        label = self.todo[i].label
        if message and message[0] == "ok":
            return
        if message and message[0] == "error":
            err = pickle.loads(message[1])
            if isinstance(err, Stopped):  # a signal to the worker itself stops the whole job, as one to us would
                self.stopped.append(getattr(err, "reason", str(err)))
                if not self.stop_signal:
                    self.stop_signal = signal.SIGTERM
                    self._tell_workers()
                return
            self.failure = self.failure or err
        elif message and message[0] == "bug":
            self.failure = self.failure or RuntimeError(f"training {label} failed in its worker process:\n{message[1]}")
        else:
            code = proc.exitcode
            if self.stop_signal and code in (-signal.SIGTERM, -signal.SIGINT):
                return  # stopped by our stop (or the terminal's Ctrl-C) before its training began: nothing to save
            how = (
                f"was killed ({signal.Signals(-code).name})"
                if code is not None and code < 0
                else f"exited with status {code}"
            )
            run = self.todo[i].run
            kept = (
                f"its last checkpoint in {run} is kept"
                if any(run.glob("checkpoint-*.safetensors"))
                else f"it had no checkpoint yet in {run}"
            )
            self.failure = self.failure or Stopped(f"the worker training {label} {how}: {kept}")
        self._tell_workers()  # one failure stops the others, each with a checkpoint

    def run(self) -> None:
        from tqdm.auto import tqdm

        total = sum(int(j.cfg["train"]["steps"]) for j in self.todo)
        bar = tqdm(total=total, desc=f"train {len(self.todo)} models, {self.jobs} at a time", disable=not self.progress)
        self.bar = bar
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        nxt = 0
        try:
            while nxt < len(self.todo) or self.running:
                while (
                    nxt < len(self.todo) and len(self.running) < self.jobs and not self.stop_signal and not self.failure
                ):
                    self._start(nxt)
                    nxt += 1
                if (self.stop_signal or self.failure) and not self.running:
                    break
                for i in list(self.running):
                    proc, conn = self.running[i]
                    if not proc.is_alive() or conn.poll():
                        self._finish(i)
                done = int(sum(self.steps))
                if done != bar.n:
                    bar.update(done - bar.n)  # (tqdm draws at most every mininterval)
                time.sleep(0.2)
        except BaseException:
            self._tell_workers()  # a second Ctrl-C or a bug here: the workers still checkpoint and stop
            raise
        finally:
            bar.close()
            for s, handler in old.items():
                signal.signal(s, handler)
        if self.failure is not None:
            raise self.failure
        if self.stop_signal or self.stopped:
            name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal"
            raise Stopped(f"stopped by {name}: {len(self.stopped)} model(s) wrote a checkpoint and stopped")
