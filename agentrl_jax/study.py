"""The study runner: `python -m agentrl_jax.study --gin_file=gin/experiments/study/grid.gin [--dry_run]`.

A grid (`study.stages`, written by scripts/gen_study_gin.py) lists every stage of the study: Ckpt V1 (RL on
WebShop), the SFT data sets, Ckpt V2 (SFT), the RL runs, their evaluations and the env-axes measurement. Each
stage is one subprocess of an existing entry point on its own gin file:

    v1, rl      python -m agentrl_jax.train --gin_file=G
    data        python -m agentrl_jax.expert_data --gin_file=G --domain=D --source=expert|rollout ...
    sft         python -m agentrl_jax.sft --gin_file=G
    eval        python -m agentrl_jax.evaluate --gin_file=G
    properties  python -m agentrl_jax.env_properties --gin_file=G

Stages run in dependency order (each stage's `after`; among ready stages V1, data, SFT, RL, evaluations, env
axes). A stage that exits 0 and leaves its output (`output`: a run folder, a JSONL or JSON file; a run folder's
latest checkpoint at its num_steps) gets a done marker (<output_dir>/stages/<name>.done) and is skipped by later
calls; a stage without one (never run, failed, killed or preempted) is run again with the same command, and the
entry points resume by themselves (the trainer from its checkpoints, the evaluator from its finished cells). Each
stage's output goes to <output_dir>/logs/<name>.log and to the console. At the end the study's tables are written to
<output_dir>/tables/ from whatever has been evaluated so far (`agentrl_jax.study_tables`). A SIGINT/SIGTERM to
the runner (a preemption) is passed on to the running stage (the trainer saves and exits 75); the runner then
stops and exits 75 too.

    --dry_run         print each stage's state and exact command, run nothing
    --only=GLOB       run only matching stages (repeatable; their unfinished dependencies block them)
    --keep_going      after a failure, go on with the stages that do not depend on it
    --tables_only     only write the tables
    --stage_binding=B append a gin binding to every stage's command (e.g. "MODEL_PATH = '/data/llama'")
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import heapq
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gin

KIND_MODULES = {"v1": "agentrl_jax.train", "data": "agentrl_jax.expert_data", "sft": "agentrl_jax.sft",
                "rl": "agentrl_jax.train", "eval": "agentrl_jax.evaluate", "properties": "agentrl_jax.env_properties"}
KIND_ORDER = tuple(KIND_MODULES)
EXIT_STOPPED = 75  # the runner stopped by a signal: = agentrl_jax.checkpoint.EXIT_PREEMPTED, the same command resumes  # among stages ready at once: V1, data, SFT (V2), RL runs, evaluations, axes


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    gin: str
    output: str
    after: tuple = ()
    args: tuple = ()
    run: Optional[Mapping[str, Any]] = None  # an RL run's grid coordinates: domain, aug, thinking, init, seed
    of: Optional[str] = None  # an evaluation: the stage whose policy it evaluates


@gin.configurable
def study(output_dir: str = gin.REQUIRED, stages: Sequence[Mapping[str, Any]] = gin.REQUIRED,
          sft_mix_domains: Sequence[str] = (), stage_bindings: Sequence[str] = (), tie: float = 0.5,
          n_boot: int = 2000, compilation_cache: Optional[str] = "jax_cache") -> Dict[str, Any]:
    """The grid as gin gives it: output_dir (markers, logs, tables), stages (dicts: name, kind, gin, output,
    after, args, run, of), the evaluation domains in V2's SFT mix (Table 6's "In mix?"), bindings appended
    to every stage's command, the ranking's tie and the intervals' bootstrap replicates.

    compilation_cache: JAX's persistent compilation cache for every stage (a folder under output_dir, or an
    absolute path; None = off): the grid's runs compile the same programs, so later stages skip compilation
    (the tiny grid's Sokoban run: 254 s -> 61 s on a loaded 2-core CPU). A JAX_COMPILATION_CACHE_DIR already in
    the environment wins."""
    cache = None if not compilation_cache else os.path.join(output_dir, compilation_cache)
    return {"output_dir": output_dir, "stages": parse_stages(stages), "sft_mix_domains": tuple(sft_mix_domains),
            "stage_bindings": tuple(stage_bindings), "tie": float(tie), "n_boot": int(n_boot),
            "compilation_cache": cache}


def parse_stages(raw: Sequence[Mapping[str, Any]]) -> List[Stage]:
    """Stages from the grid's dicts, checked: known kinds, unique names, dependencies that exist, no cycle."""
    out, names = [], set()
    fields = {f.name for f in dataclasses.fields(Stage)}
    for i, d in enumerate(raw):
        unknown = set(d) - fields
        if unknown or not {"name", "kind", "gin", "output"} <= set(d):
            raise ValueError(f"study.stages[{i}]: a stage is a dict with name, kind, gin, output (and optional after, "
                             f"args, run, of); got keys {sorted(d)}.")
        if d["kind"] not in KIND_MODULES:
            raise ValueError(f"study.stages[{i}] ({d['name']}): kind {d['kind']!r} is not one of {KIND_ORDER}.")
        if d["name"] in names:
            raise ValueError(f"study.stages: two stages are named {d['name']!r}; names must be unique.")
        names.add(d["name"])
        out.append(Stage(**{**d, "after": tuple(d.get("after", ())), "args": tuple(d.get("args", ()))}))
    for st in out:
        missing = [a for a in st.after if a not in names]
        if missing:
            raise ValueError(f"stage {st.name!r} runs after {missing}, which the grid does not have.")
    execution_order(out)  # raises on a cycle
    return out


def execution_order(stages: Sequence[Stage]) -> List[Stage]:
    """Topological order of the stages: a stage after all of its dependencies; among ready ones by kind
    (KIND_ORDER) and then as listed."""
    index = {st.name: i for i, st in enumerate(stages)}
    waiting = {st.name: set(st.after) for st in stages}
    users: Dict[str, List[str]] = {st.name: [] for st in stages}
    for st in stages:
        for a in st.after:
            users[a].append(st.name)
    by_name = {st.name: st for st in stages}
    ready = [(KIND_ORDER.index(st.kind), index[st.name], st.name) for st in stages if not st.after]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, name = heapq.heappop(ready)
        order.append(by_name[name])
        for u in users[name]:
            waiting[u].discard(name)
            if not waiting[u]:
                heapq.heappush(ready, (KIND_ORDER.index(by_name[u].kind), index[u], u))
    if len(order) != len(stages):
        stuck = sorted(n for n, w in waiting.items() if w)
        raise ValueError(f"study.stages: the dependencies of {stuck} form a cycle.")
    return order


def command(stage: Stage, stage_bindings: Sequence[str] = (), python: str = sys.executable) -> List[str]:
    """The exact command of a stage."""
    return [python, "-m", KIND_MODULES[stage.kind], f"--gin_file={stage.gin}", *stage.args,
            *(f"--gin_bindings={b}" for b in stage_bindings)]


# ------------------------------------------------------------------------------------------ markers
def marker_path(output_dir: str, stage: Stage) -> str:
    return os.path.join(output_dir, "stages", stage.name + ".done")


def is_done(output_dir: str, stage: Stage) -> bool:
    return os.path.isfile(marker_path(output_dir, stage))


def write_marker(output_dir: str, stage: Stage, cmd: Sequence[str], seconds: float) -> None:
    """Atomically, and only after the stage's process exited 0."""
    path = marker_path(output_dir, stage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"stage": stage.name, "command": list(cmd), "seconds": seconds,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f, indent=1)
    os.replace(path + ".tmp", path)


def stage_env(spec: Mapping[str, Any]) -> Dict[str, str]:
    """The stages' environment: the runner's, plus the persistent compilation cache unless set already."""
    env = dict(os.environ)
    if spec.get("compilation_cache"):
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(spec["compilation_cache"]))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def run_stage(stage: Stage, cmd: Sequence[str], log_path: str, echo=print, env=None) -> Tuple[int, bool]:
    """Run one stage's process, its output to `log_path` and (line by line) to `echo`; (its exit status, whether
    a SIGINT/SIGTERM to the runner was passed on to it). Passing it on lets the stage save (a preempted trainer
    checkpoints) and leaves no orphan behind."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    signalled: List[int] = []
    proc: Optional[subprocess.Popen] = None

    def forward(signum, _frame):
        signalled.append(signum)
        if proc is not None:
            proc.send_signal(signum)

    # Installed before the process starts: a signal in between is not lost (nor kills the runner alone).
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, env=env)
            if signalled:
                proc.send_signal(signalled[0])
            for line in proc.stdout:
                log.write(line)
                echo(f"[{stage.name}] {line.rstrip()}")
            return proc.wait(), bool(signalled)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


RUN_KINDS = ("v1", "rl", "sft")  # stages whose output is a training run folder


def unfinished_run(stage: Stage) -> Optional[str]:
    """Why a run stage that exited 0 is not finished (its latest checkpoint is not its configured num_steps, read
    from the run's operative_config.gin), or None when it is."""
    from agentrl_jax import evaluate  # noqa: PLC0415 (jax loads only when a run stage ends)

    try:
        want = int(evaluate.run_settings(stage.output)["num_steps"])
        have = max(evaluate.run_steps(stage.output)) if want else 0  # num_steps 0 only evaluates: no checkpoint
    except (ValueError, KeyError) as e:
        return f"its run folder has no num_steps or checkpoint ({type(e).__name__}: {e})"
    if have != want:
        return f"its latest checkpoint is step {have}, not its num_steps {want}"
    return None


# ------------------------------------------------------------------------------------------ the runner
def selected(stage: Stage, only: Sequence[str]) -> bool:
    return not only or any(fnmatch.fnmatchcase(stage.name, pat) for pat in only)


def run_study(spec: Mapping[str, Any], dry_run: bool = False, only: Sequence[str] = (), keep_going: bool = False,
              extra_bindings: Sequence[str] = (), python: str = sys.executable, echo=print) -> Dict[str, List[str]]:
    """Run (or print) every selected stage in order; {"done", "ran", "failed", "blocked", "stopped"}: stage names
    ("stopped": the stage that was running when a SIGINT/SIGTERM reached the runner, which then stops)."""
    out_dir = spec["output_dir"]
    bindings = [*spec["stage_bindings"], *extra_bindings]
    status: Dict[str, List[str]] = {"done": [], "ran": [], "failed": [], "blocked": [], "stopped": []}
    env = stage_env(spec)
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        echo(f"stages share JAX's compilation cache: JAX_COMPILATION_CACHE_DIR={env['JAX_COMPILATION_CACHE_DIR']}")
    for stage in execution_order(spec["stages"]):
        if not selected(stage, only):
            continue
        cmd = command(stage, bindings, python)
        if is_done(out_dir, stage):
            status["done"].append(stage.name)
            echo(f"done     {stage.name}")
            continue
        waiting = [a for a in stage.after if not is_done(out_dir, next(s for s in spec["stages"] if s.name == a))]
        if dry_run:
            echo(f"{'todo' if not waiting else 'after ' + ','.join(waiting)}  {stage.name}: {shlex.join(cmd)}")
            status["ran"].append(stage.name)
            continue
        if waiting:
            status["blocked"].append(stage.name)
            echo(f"blocked  {stage.name}: waits for {', '.join(waiting)}")
            continue
        echo(f"run      {stage.name}: {shlex.join(cmd)}")
        t0 = time.perf_counter()
        rc, signalled = run_stage(stage, cmd, os.path.join(out_dir, "logs", stage.name + ".log"), echo, env)
        if rc == 0:
            why = not_finished(stage)
            if why:
                echo(f"{stage.name} exited 0 but {why}")
                rc = -1
        if rc == 0 and not signalled:
            write_marker(out_dir, stage, cmd, time.perf_counter() - t0)
            status["ran"].append(stage.name)
            continue
        log_path = os.path.join(out_dir, "logs", stage.name + ".log")
        if signalled:
            # The runner was told to stop (a preemption, Ctrl-C): no marker, and no next stage; the same command
            # resumes the stage (rc 0 included: a signal may arrive as the stage finishes).
            status["stopped"].append(stage.name)
            echo(f"STOPPED  {stage.name} (exit {rc}) by a signal; run the same command to resume. Its log: {log_path}")
            break
        status["failed"].append(stage.name)
        echo(f"FAILED   {stage.name} (exit {rc}); its log: {log_path}")
        if not keep_going:
            break
    return status


def not_finished(stage: Stage) -> Optional[str]:
    """Why a stage that exited 0 is no finished stage, or None: no output (e.g. a module with no CLI yet), or a
    run whose checkpoints stop short of its num_steps (a preempted run that still exited 0)."""
    if not os.path.exists(stage.output):
        return f"wrote no {stage.output}"
    return unfinished_run(stage) if stage.kind in RUN_KINDS else None


def tables(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """The study's tables (agentrl_jax.study_tables) from the evaluations found in the grid's eval folders."""
    from agentrl_jax import study_tables  # noqa: PLC0415 (matplotlib loads only here)

    by_name = {st.name: st for st in spec["stages"]}
    runs, starts, properties = [], {}, None
    for st in spec["stages"]:
        if st.kind == "eval" and st.of in by_name:
            target = by_name[st.of]
            if target.kind == "rl" and target.run:
                r = target.run
                runs.append(study_tables.RunEval(target.name, r["domain"], bool(r["aug"]), bool(r["thinking"]),
                                                 r["init"], int(r["seed"]), st.output))
            elif target.kind == "v1":
                starts["v1"] = st.output
            elif target.kind == "sft":
                starts["v2"] = st.output
        elif st.kind == "properties":
            properties = st.output
    return study_tables.write_tables(runs, starts, os.path.join(spec["output_dir"], "tables"),
                                     spec["sft_mix_domains"], properties, spec["tie"], spec["n_boot"])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agentrl_jax.study", description=__doc__.splitlines()[0])
    ap.add_argument("--gin_file", action="append", default=[], help="the grid (gin/experiments/study/grid.gin)")
    ap.add_argument("--gin_bindings", action="append", default=[], help="a binding of the runner, e.g. study.n_boot")
    ap.add_argument("--dry_run", action="store_true", help="print the stages' commands, run nothing")
    ap.add_argument("--only", action="append", default=[], help="run only stages matching this glob (repeatable)")
    ap.add_argument("--keep_going", action="store_true", help="after a failure, run the stages that do not need it")
    ap.add_argument("--tables_only", action="store_true", help="only write the tables from what is evaluated")
    ap.add_argument("--stage_binding", action="append", default=[], help="a gin binding for every stage's command")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from agentrl_jax import study_tables  # noqa: F401, PLC0415 (imports the evaluator, a gin configurable: before gin locks)
    from agentrl_jax.train import parse_gin  # noqa: PLC0415 (the same gin handling as the entry points)

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.gin_file:
        raise SystemExit("error: pass --gin_file=gin/experiments/study/grid.gin (or study_tiny/grid.gin).")
    parse_gin(args.gin_file, args.gin_bindings)
    try:
        spec = study()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not args.tables_only:
        status = run_study(spec, dry_run=args.dry_run, only=args.only, keep_going=args.keep_going,
                           extra_bindings=args.stage_binding)
        print(f"stages: {len(status['done'])} done before, {len(status['ran'])} "
              f"{'to run' if args.dry_run else 'ran'}, {len(status['failed'])} failed, {len(status['blocked'])} blocked"
              f"{', 1 stopped by a signal' if status['stopped'] else ''}")
        if args.dry_run:
            return
        if status["stopped"]:  # preempted: stop now (no tables), with the trainer's "not finished, resume" status
            raise SystemExit(EXIT_STOPPED)
    out = tables(spec)
    print(f"tables: {len(out['groups'])} groups -> {os.path.join(spec['output_dir'], 'tables', 'tables.md')}")
    if not args.tables_only and (status["failed"] or status["blocked"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
