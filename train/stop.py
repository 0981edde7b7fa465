"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, exit; say so at once.

The loop checks `StopRequest.signum` between steps, so a stop never leaves a half-applied
optimiser step behind and a resumed run continues bit for bit. But one step can be long (a
ViT-B/16 step on a CPU takes a minute or more), and Python runs its signal handlers only
between bytecodes, never inside a long PyTorch call. So the C-level handler also writes the
signal's number to a socket (`signal.set_wakeup_fd`), and a watcher thread, which PyTorch's
kernels leave free to run because they release the GIL, answers at once: it says when the run
will stop, and on a second signal exits immediately without saving (last.pt keeps the last
completed save).
"""

import os
import signal
import socket
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Install with `StopRequest()`, call `step_started()` / `step_finished()` around each step,
    check `signum` between steps, and `restore()` at the end."""

    def __init__(self, first_step_estimate: float | None = None):
        self.signum: int | None = None
        self.step_start: float | None = None
        self.step_seconds = first_step_estimate  # the last step's duration, or an estimate
        self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        self._receive, self._send = socket.socketpair()
        self._send.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._send.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="stop-watcher")
        self._watcher.start()

    def _handle(self, signum, frame):  # the Python-level handler: runs between steps' operations
        if self.signum is None:
            self.signum = signum

    def step_started(self) -> None:
        self.step_start = time.perf_counter()

    def step_finished(self) -> None:
        self.step_seconds = time.perf_counter() - self.step_start
        self.step_start = None

    def _when(self) -> str:
        if self.step_start is None:
            return "at the end of this step or evaluation"
        running = time.perf_counter() - self.step_start
        if self.step_seconds is None:
            return f"once the current step ends (it has run {running:.0f} s)"
        return f"once the current step ends (in about {max(0.0, self.step_seconds - running):.0f} s)"

    def _watch(self) -> None:
        """Runs in its own thread: one byte arrives per signal, the moment it is delivered."""
        seen = 0
        while True:
            try:
                data = self._receive.recv(16)
            except OSError:
                return
            if not data:  # restore() closed the socket
                return
            for signum in (s for s in data if s in SIGNALS):
                seen += 1
                name = signal.Signals(signum).name
                if seen == 1:
                    self.signum = self.signum or signum
                    print(f"\n{name}: stopping {self._when()}, then saving last.pt; "
                          f"send {name} again to stop now without saving", file=sys.stderr, flush=True)
                else:
                    print(f"\n{name} again: stopped without saving; last.pt holds the last completed save",
                          file=sys.stderr, flush=True)
                    os._exit(128 + signum)

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self._send.close()  # the watcher's recv() then returns b"" and the thread ends
        self._watcher.join(timeout=5)
        self._receive.close()
