"""The demo's console and its log: a line per stage with its time, a progress bar while a long stage runs (on a
terminal), and everything the libraries print meanwhile (the Trainer's loss dicts, warnings, notices, their
own progress bars) in a log file in the output folder, whose path the first line names.
"""

import logging
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from tqdm.auto import tqdm


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every console-bound logging handler of every logger that holds its own stream (file handlers excluded; those
    that write to whatever `sys.stderr` is, such as logging's last resort, follow the redirection by themselves)."""
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    found = {
        id(h): h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and not isinstance(getattr(type(h), "stream", None), property)
    }
    return list(found.values())


@contextmanager
def _library_progress_bars_off():
    """transformers' (loading weights, writing shards), huggingface_hub's and datasets' bars off, then as they were."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    states = (
        transformers_logging.is_progress_bar_enabled(),
        not hub.are_progress_bars_disabled(),
        datasets.is_progress_bar_enabled(),
    )
    transformers_logging.disable_progress_bar()
    hub.disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for enabled, enable in zip(
            states, (transformers_logging.enable_progress_bar, hub.enable_progress_bars, datasets.enable_progress_bars)
        ):
            if enabled:
                enable()


class Console:
    """What the person running the demo sees (`say`, `stage`) and where the rest goes (`log_path`)."""

    def __init__(self, log_path: Path):
        import datasets  # noqa: F401  (their log handlers exist before any stage, bound to the real console)
        import transformers  # noqa: F401

        self.out, self.err = sys.stdout, sys.stderr  # the console as it is when the demo starts
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "a", encoding="utf-8", buffering=1)  # appended: a rerun keeps the record
        self.log.write(f"\n===== langbridge demo, {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        self._bar = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def advance(self, steps: int = 1) -> None:
        """Move the running stage's progress bar (a no-op when there is none, or no terminal)."""
        if self._bar is not None:
            self._bar.update(steps)

    @contextmanager
    def quiet(self, title: str, total: int | None = None):
        """Within: stdout, stderr, warnings and every logging stream go to the log, the libraries' progress bars are
        off, and one bar of our own (`advance`) shows on the console's stderr when it is a terminal."""
        self.log.write(f"\n--- {title} ---\n")
        swapped = {}
        for handler in _stream_handlers():
            swapped[handler] = _set_stream(handler, self.log)
        self._bar = tqdm(
            total=total,
            desc=f"[demo] {title}",
            file=self.err,
            leave=False,
            disable=None,
            dynamic_ncols=True,
            bar_format=None if total else "{desc}: {elapsed}",
        )
        try:
            with redirect_stdout(self.log), redirect_stderr(self.log), _library_progress_bars_off():
                yield
        finally:
            self._bar.close()
            self._bar = None
            for handler in _stream_handlers():  # also those created meanwhile, bound to the redirected stderr
                if handler.stream is self.log:
                    _set_stream(handler, swapped.get(handler) or self.err)

    def close(self) -> None:
        self.log.close()


def _set_stream(handler: logging.StreamHandler, stream):
    """`handler.setStream`, also for a handler whose stream was closed under it (one bound to a stderr that is gone,
    such as a test's captured one), which setStream would fail to flush; returns the stream it had."""
    try:
        return handler.setStream(stream)
    except ValueError:
        old, handler.stream = handler.stream, stream
        return old
