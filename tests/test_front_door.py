"""What a new user sees: configuration errors without a traceback, grouped TensorBoard tags, the end-of-run
summary, SFT on its own step axis."""
import gin
import pytest

from agentrl_jax import train as train_mod
from agentrl_jax.logging import MetricsLogger


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_a_bad_value_prints_one_message_and_verbose_shows_the_traceback(tmp_path, capsys):
    args = ["--gin_file=gin/experiments/sokoban_tiny_cpu.gin", f"--gin_bindings=OUTPUT_DIR = '{tmp_path}'",
            "--gin_bindings=train.rollout_mode = 'gpu'"]
    with pytest.raises(SystemExit) as e:
        train_mod.main(args)
    msg = str(e.value)
    assert msg.startswith("error: train.rollout_mode='gpu'; use one of ('device', 'host')") and "--verbose" in msg
    assert "Traceback" not in msg
    gin.clear_config()
    with pytest.raises(ValueError, match="rollout_mode"):  # --verbose: the exception itself, with its traceback
        train_mod.main(args + ["--verbose"])


def test_a_missing_model_folder_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="model_path '/no/such/model' is not a folder.*MODEL_PATH"):
        train_mod.main(["--gin_file=gin/experiments/sokoban_tiny_cpu.gin", f"--gin_bindings=OUTPUT_DIR = '{tmp_path}'",
                        "--gin_bindings=MODEL_PATH = '/no/such/model'"])


def test_metrics_are_grouped_so_success_and_return_come_first():
    names = {k: train_mod.tb_name(k) for k in ("success_rate", "return", "kl_loss", "approx_kl", "clip_frac",
                                                "grad_norm", "learning_rate", "eval/success_rate", "time/rollout_s",
                                                "sft/nll", "env/alfworld/restarts")}
    assert names["success_rate"] == "episode/success_rate" and names["return"] == "episode/return"
    assert names["kl_loss"] == "loss/kl_loss" and names["clip_frac"] == "loss/clip_frac"
    assert names["grad_norm"] == "optim/grad_norm" and names["learning_rate"] == "optim/learning_rate"
    assert names["eval/success_rate"] == "eval/success_rate" and names["sft/nll"] == "sft/nll"
    assert all("/" in v for v in names.values())  # nothing left at the top level
    groups = sorted({v.split("/")[0] for k, v in names.items() if not k.startswith("env/")})
    assert groups[0] == "episode"  # TensorBoard sorts groups: the first screen shows success and return


def test_run_summary_gives_intervals_and_where_things_are():
    text = train_mod.run_summary({"eval/success_rate": 0.25, "eval/episodes": 64.0},
                                 {"eval/success_rate": 0.75, "eval/episodes": 64.0}, "outputs/run")
    assert "25.0% [16.0, 36.8] of 64 episodes" in text and "75.0% [63.2, 84.0]" in text and "+50.0 points" in text
    assert "tensorboard --logdir outputs/run/tb" in text and "outputs/run/checkpoints" in text


def test_sft_points_have_their_own_step_axis(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(str(tmp_path), total_steps=4, progress=True) as logger:
        for step in (10, 20, 30):
            logger.scalars(step, {"sft/nll": 1.0 / step}, progress=False)
        logger.scalars(1, {"episode/success_rate": 0.5})
        assert logger._last_step == 1  # the bar counts RL steps only
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("sft/nll")] == [10, 20, 30]
