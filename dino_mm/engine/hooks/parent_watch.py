"""Stop a rank whose launcher died, instead of letting it train on as an orphan.

``torchrun`` (its elastic agent), ``srun``'s step daemon or ``mpirun`` start the ranks as
their children and stop them when a rank fails. When the launcher itself is killed
(``kill -9`` of the agent, a login shell or node agent that dies), nothing stops the
ranks: they are re-parented to ``init`` and run to ``max_iters``, holding the GPUs and
writing checkpoints that nobody waits for. :class:`ParentProcessWatchHook` notices the
change of parent process and ends the rank.
"""
import os
import sys
import threading
from typing import Optional

from mmengine.dist import get_rank
from mmengine.hooks import Hook

from dino_mm.registry import HOOKS

__all__ = ['ParentProcessWatchHook']

DATA_BATCH = Optional[dict]


@HOOKS.register_module()
class ParentProcessWatchHook(Hook):
    """End the process when its parent (the launcher) is gone.

    At ``before_run`` the hook records ``os.getppid()`` and starts a daemon thread that
    compares it with the current parent every ``poll_interval`` seconds. Once the
    parent has changed (the process was re-parented, i.e. the launcher died):

    * at the next iteration boundary (after a train / val / test iteration, so never in
      the middle of a checkpoint save by the hooks that run before it) the rank logs an
      error naming the old parent and raises ``SystemExit(1)``, which runs the
      ``finally`` blocks (work dir lock, ...);
    * a rank that does not reach an iteration boundary within ``grace`` seconds (blocked
      in a collective whose peer already stopped, or in a long save) is ended with
      ``os._exit(1)`` by the thread.

    ``tools/train.py`` and ``tools/test.py`` add it to every run with a launcher
    (``--launcher pytorch|slurm|mpi``); single-process runs (``--launcher none``) are
    not watched, since a ``nohup`` run legitimately outlives its shell.

    Args:
        poll_interval (float): Seconds between two checks of the parent. Defaults to 1.
        grace (float): Seconds the rank gets to stop at an iteration boundary before it
            is ended at once. Defaults to 30.
        watch_without_launcher (bool): Also watch ``--launcher none`` runs. Defaults to
            False.
    """

    priority = 'VERY_LOW'  # after the checkpoint hook of the same iteration

    def __init__(self, poll_interval: float = 1.0, grace: float = 30.0,
                 watch_without_launcher: bool = False) -> None:
        if poll_interval <= 0 or grace < 0:
            raise ValueError(f'ParentProcessWatchHook needs poll_interval > 0 and grace >= 0, '
                             f'got poll_interval={poll_interval}, grace={grace}.')
        self.poll_interval = float(poll_interval)
        self.grace = float(grace)
        self.watch_without_launcher = watch_without_launcher
        self._parent: Optional[int] = None
        self._gone = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._logger = None

    # ------------------------------------------------------------------ watching
    def before_run(self, runner) -> None:
        launcher = getattr(runner, 'launcher', 'none')
        if launcher == 'none' and not self.watch_without_launcher:
            return
        parent = os.getppid()
        if parent == 1:  # already re-parented: there is no launcher left to watch
            runner.logger.warning('ParentProcessWatchHook: the parent of this process is '
                                  'already pid 1; the launcher cannot be watched.')
            return
        self._parent = parent
        self._logger = runner.logger
        self._work_dir = runner.work_dir
        self._gone.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name='dino_mm-parent-watch',
                                        daemon=True)
        self._thread.start()

    def after_run(self, runner) -> None:
        self._stop.set()

    def _parent_changed(self) -> bool:
        return self._parent is not None and os.getppid() != self._parent

    def _message(self, where: str) -> str:
        return (f'Rank {get_rank()} (pid {os.getpid()}): its launcher process (pid '
                f'{self._parent}, e.g. the torchrun agent or srun step) is gone; the process '
                f'is now a child of pid {os.getppid()}. {where} instead of running on as an '
                f'orphan. Checkpoints already written to "{self._work_dir}" are kept; start '
                'the job again with --resume.')

    def _log(self, text: str) -> None:
        try:
            self._logger.error(text)  # shown on every rank (ERROR), and in the log file
        except Exception:  # no logger left: stderr as a last resort
            try:
                print(text, file=sys.stderr, flush=True)
            except Exception:
                pass

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            if not self._parent_changed():
                continue
            self._gone.set()
            if self._stop.wait(self.grace):
                return  # the main thread stopped at an iteration boundary
            self._log(self._message(f'It did not stop within grace={self.grace:g} s (no '
                                    'iteration ended, or the shutdown hung), so it exits '
                                    'now'))
            os._exit(1)

    # --------------------------------------------------- iteration boundaries
    def _check(self, where: str) -> None:
        if self._gone.is_set() or self._parent_changed():
            # the watcher thread keeps running: it ends a shutdown that hangs past grace
            self._log(self._message(f'Stopping {where}'))
            raise SystemExit(1)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        # runner.iter counts the iterations done before this one (0-based)
        self._check(f'after training iteration {runner.iter + 1}')

    def after_val_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                       outputs=None) -> None:
        self._check(f'after validation batch {batch_idx + 1}')

    def after_test_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                        outputs=None) -> None:
        self._check(f'after test batch {batch_idx + 1}')
