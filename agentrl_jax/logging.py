"""Metrics logging: TensorBoard event files (tensorboardX, no TensorFlow) and a console progress bar.

Only process 0 writes; on other processes every method is a no-op, so the training loop calls it
unconditionally. View with ``tensorboard --logdir <logdir>``.

    with MetricsLogger(workdir + "/tb", total_steps=150) as mlog:
        mlog.gin_config(gin.operative_config_str())
        for step in ...:
            mlog.scalars(step, {"loss": loss, "reward/mean": r})
            mlog.text(step, "samples/sokoban", trajectory_text)
"""
from __future__ import annotations

import logging as _pylogging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import numpy as np

log = _pylogging.getLogger(__name__)


def _to_float(v: Any) -> Optional[float]:
    try:
        a = np.asarray(jax.device_get(v))
    except Exception:
        return None
    if a.ndim != 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        return None
    return float(a)


@gin.configurable(module="agentrl_jax.logging")
class MetricsLogger:
    """TensorBoard + tqdm logger.

    Args:
      logdir: directory for the event files (created).
      total_steps: for the progress bar's ETA (None: no total).
      progress: show a tqdm bar on the console.
      bar_keys: metrics shown on the bar (default: the first few scalars logged).
      initial_step: where the bar starts (e.g. the restored step).
      flush_secs: how often tensorboardX flushes to disk.
      enabled: force on/off; default ``jax.process_index() == 0``.
    """

    def __init__(
        self,
        logdir: str,
        total_steps: Optional[int] = None,
        progress: bool = True,
        bar_keys: Optional[Sequence[str]] = None,
        initial_step: int = 0,
        flush_secs: int = 30,
        enabled: Optional[bool] = None,
    ):
        self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
        self.logdir = os.path.abspath(os.fspath(logdir))
        self._bar_keys = list(bar_keys) if bar_keys is not None else None
        self._writer = None
        self._bar = None
        self._last_step = initial_step
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(self.logdir, exist_ok=True)
        self._writer = SummaryWriter(logdir=self.logdir, flush_secs=flush_secs)
        if progress:
            from tqdm.auto import tqdm

            # tqdm shows rate (it/s) and ETA from total; postfix carries the latest key metrics
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                             smoothing=0.1)

    # ------------------------------------------------------------------------------------------ writes
    def scalars(self, step: int, metrics: Mapping[str, Any], progress: bool = True) -> None:
        """Log every scalar in `metrics` (jax/numpy/python numbers; non-scalars are skipped with a debug
        log). Advances the progress bar to `step` (progress=False: metrics on another step axis, e.g. SFT's)."""
        if not self.enabled:
            return
        step = int(step)
        shown = {}
        for k, v in metrics.items():
            f = _to_float(v)
            if f is None:
                log.debug("metric %r is not a scalar; not logged", k)
                continue
            self._writer.add_scalar(k, f, global_step=step)
            shown[k] = f
        if self._bar is not None and progress:
            keys = self._bar_keys if self._bar_keys is not None else list(shown)[:4]
            post = {k: (f"{shown[k]:.4g}" if math.isfinite(shown[k]) else str(shown[k])) for k in keys if k in shown}
            if step > self._last_step:
                self._bar.update(step - self._last_step)
            if post:
                self._bar.set_postfix(post, refresh=False)
        if progress:
            self._last_step = max(self._last_step, step)

    def histogram(self, step: int, name: str, values: Any) -> None:
        """Histogram of an array (flattened; non-finite values dropped)."""
        if not self.enabled:
            return
        a = np.asarray(jax.device_get(values), dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        if a.size:
            self._writer.add_histogram(name, a, global_step=int(step))

    def text(self, step: int, name: str, text: str) -> None:
        """A text entry (e.g. a sample trajectory); shown under TensorBoard's Text tab."""
        if not self.enabled:
            return
        self._writer.add_text(name, str(text), global_step=int(step))

    def gin_config(self, config_text: str, step: int = 0) -> None:
        """The operative gin config, as text at tag ``gin/config`` (markdown code block keeps indentation)."""
        if not self.enabled:
            return
        body = "\n".join("    " + line for line in str(config_text).splitlines())
        self._writer.add_text("gin/config", body, global_step=int(step))

    def write(self, msg: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    # ------------------------------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
