"""Output capture (stdout and stderr at the file-descriptor level) and the signal guard of a run."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from provenance.bundle import AppendLog


class RunInterrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM (or SIGINT) arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class FdTee:
    """Capture a file descriptor (1 or 2) at the OS level: the terminal still sees everything."""

    def __init__(self, fd: int, log: AppendLog) -> None:
        self.fd = fd
        self.log = log
        self.saved = os.dup(fd)
        r, w = os.pipe()
        self._r = r
        os.dup2(w, fd)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, name=f"prov-tee-{fd}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                os.write(self.saved, chunk)
            except OSError:
                pass
            pending += chunk
            # write whole lines, so that a secret split across reads is still masked
            cut = pending.rfind(b"\n") + 1
            if cut or len(pending) > 1 << 16:
                cut = cut or len(pending)
                self.log.write(pending[:cut])
                pending = pending[cut:]
        if pending:
            self.log.write(pending)
        os.close(self._r)

    def stop(self) -> None:
        stream = sys.stdout if self.fd == 1 else sys.stderr
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, self.fd)  # closes the pipe's write end held by fd
        self._thread.join(timeout=5)
        os.close(self.saved)


class OutputCapture:
    """Tee fds 1 and 2 into the bundle's stdout/stderr logs while the run is live."""

    def __init__(self) -> None:
        self._tees: list[FdTee] = []

    def start(self, logs: dict[int, AppendLog]) -> None:
        for fd, log in logs.items():
            self._tees.append(FdTee(fd, log))

    @property
    def active(self) -> bool:
        return bool(self._tees)

    def terminal_fd(self, fd: int) -> int | None:
        """The original descriptor behind a captured fd (what the terminal is), or None when not captured."""
        return next((t.saved for t in self._tees if t.fd == fd), None)

    def stop(self) -> None:
        for t in self._tees:
            t.stop()
        self._tees.clear()


class SignalGuard:
    """Turn SIGTERM and SIGINT into RunInterrupted in the main thread, so that the run seals as interrupted.

    While the run seals the signals are deferred (noted, not acted on); once the seal is written,
    `redeliver()` restores the handlers that were there before the run and sends the noted signals
    again, so that a launcher's stop still stops the process, after the bundle is sealed."""

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}
        self.deferred: list[int] = []  # signals that arrived while deferred, in order
        self._deferring = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            raise RunInterrupted(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, handler)

    def defer(self) -> None:
        """While the run seals: SIGTERM/SIGINT are noted, not acted on (a launcher that stops the
        survivors of a failed rank must not leave the bundle half-sealed); restore() ends this.
        Deferring again keeps what was noted."""
        if not self._old or self._deferring:
            return
        self._deferring = True

        def note(signum: int, frame: FrameType | None) -> None:
            self.deferred.append(signum)

        for sig in self._old:
            signal.signal(sig, note)

    def restore(self) -> None:
        """The handlers that were there before the run, again (what was noted is kept for redeliver())."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self._deferring = False

    def redeliver(self) -> None:
        """Restore the previous handlers, then send this process every signal noted while deferred (once
        each, in the order they came): the default action of SIGTERM ends the process, a Python handler
        (SIGINT's KeyboardInterrupt, a launcher's own) runs as if the signal came now."""
        self.restore()
        pending = list(dict.fromkeys(self.deferred))
        self.deferred.clear()
        for sig in pending:
            os.kill(os.getpid(), sig)
