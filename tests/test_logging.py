"""MetricsLogger writes real TensorBoard event files; read them back with TensorBoard's own reader."""
import glob

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from agentrl_jax.logging import MetricsLogger


def _load(logdir):
    ea = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0,
                                    event_accumulator.HISTOGRAMS: 0})
    ea.Reload()
    return ea


def _text(ea, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in ea.Tensors(tag)]


def test_scalars_text_histogram_and_gin_round_trip(tmp_path, capsys):
    with MetricsLogger(tmp_path, total_steps=3, bar_keys=["loss"]) as mlog:
        mlog.gin_config("make_optimizer.weight_decay = 0.01\nmake_schedule.kind = 'cosine'")
        for step, loss in [(1, 2.5), (2, 1.25), (3, jnp.float32(0.5))]:
            mlog.scalars(step, {"loss": loss, "reward/mean": np.float64(step / 10), "skipped": jnp.int32(0),
                                "not_scalar": np.ones(3)})
        mlog.histogram(3, "advantages", np.array([0.0, 1.0, np.nan, 2.0]))
        mlog.text(2, "samples/sokoban", "<think>push</think><answer>up</answer>")
    ea = _load(tmp_path)
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(1, 2.5), (2, 1.25), (3, 0.5)]
    assert [round(e.value, 6) for e in ea.Scalars("reward/mean")] == [0.1, 0.2, 0.3]
    assert "not_scalar" not in ea.Tags()["scalars"]
    assert _text(ea, "samples/sokoban/text_summary") == [(2, "<think>push</think><answer>up</answer>")]
    (_, gin_text), = _text(ea, "gin/config/text_summary")
    assert "make_optimizer.weight_decay = 0.01" in gin_text
    (h,) = ea.Histograms("advantages")
    assert h.step == 3 and h.histogram_value.num == 3 and h.histogram_value.max == 2.0  # NaN dropped
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=0.5" in err  # the tqdm bar with the latest key metric


def test_non_zero_process_writes_nothing(tmp_path):
    mlog = MetricsLogger(tmp_path / "p1", enabled=False)
    mlog.scalars(1, {"loss": 1.0})
    mlog.text(1, "t", "x")
    mlog.histogram(1, "h", [1.0])
    mlog.gin_config("a = 1")
    mlog.close()
    assert not (tmp_path / "p1").exists()


def test_resumed_bar_and_flush(tmp_path):
    mlog = MetricsLogger(tmp_path, total_steps=10, initial_step=5, progress=True)
    mlog.scalars(7, {"loss": float("nan")})  # non-finite values are logged, not dropped
    mlog.flush()
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    mlog.close()
    (e,) = _load(tmp_path).Scalars("loss")
    assert e.step == 7 and np.isnan(e.value)
