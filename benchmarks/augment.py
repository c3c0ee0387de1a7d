"""What distractor augmentation costs a rollout, and how many tokens it really adds per state.

    python benchmarks/augment.py --quick              # CPU smoke run (a minute or two)
    python benchmarks/augment.py                      # batch 16 and 64 Sokoban, 16 ALFWorld episodes, 3 repeats
    python benchmarks/augment.py --json out.json

Section `rollout`: the same rollout with augmentation off and on, same keys, side by side in one run:
- Sokoban on device: `sokoban_device_rollout` (one compiled program per batch), `augment=False` vs `True` with the
  sokoban bank at eps 80, p 1 (the study's V1), the same level keys and rollout key. The prompt buffer is static
  (`max_prompt_tokens`), so the extra tokens cost no generation compute here: the difference is the splice.
- ALFWorld through the env pool: `host_rollout` over the domain's `PoolTask`, plain vs `TextAugmenter` (the text
  reference, eps 300, p 1). `augment_s` is the time spent making the augmented observations (measured inside the
  run); the rest of the difference is the longer prompts' own prefill cost, reported apart (`extra_tokens_s`).
The policy answers a fixed action (`<action>up</action>` / `<action>look</action>`, a real one-layer decoder whose
greedy answer is known, `tests/helpers/fixed_answer.py`), so every turn steps the env and both sides generate
exactly the same tokens; its generation is cheap, so the overhead share is an upper bound of what a real model sees.

Section `tokens`: tokens added per state vs eps for each domain's bank (SmolLM2's tokenizer when fetched, else the
tiny one), averaged over real states (Sokoban levels, ALFWorld observations along walkthroughs, WebShop pages when
`envs.webshop` is present, ScienceWorld observations with --sciworld) and 4 keys each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))  # helpers.fixed_answer
os.environ.setdefault("ALFWORLD_DATA", os.path.join(REPO, "data", "alfworld"))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 8 Sokoban, 4 ALFWorld episodes, 1 repeat, few states")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--sections", default="rollout,tokens")
    ap.add_argument("--sciworld", action="store_true", help="also count tokens on ScienceWorld states (JVM)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - {"rollout", "tokens"}
    if unknown:
        raise SystemExit(f"error: unknown --sections {sorted(unknown)}; use rollout, tokens")
    return args


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sokoban_rows(args, chat):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import envs.sokoban as sk
    from agentrl_jax import generate as gen
    from agentrl_jax.rollout import sokoban_device_rollout
    from agentrl_jax.sokoban_prompt import SokobanPrompter
    from helpers.fixed_answer import fixed_answer_policy

    policy, n_answer = fixed_answer_policy(chat, "<action>up</action>")
    graphdef, params = nnx.split(policy)
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=10)
    pr = SokobanPrompter(chat, dim=6, max_steps=10, window=1, max_prompt_tokens=2048, augment_bank="sokoban",
                         augment_epsilon=80.0, augment_p=1.0)
    cfg = gen.GenerationConfig(max_new_tokens=n_answer + 1, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4), static_argnames=("augment",))
    prompt_fn = jax.jit(jax.vmap(pr.device_prompt, in_axes=(0, 0, 0, None, 0, 0)))
    plain_prompt_fn = jax.jit(jax.vmap(lambda s, p, a, t: pr.device_prompt(s, p, a, t, augment=False),
                                       in_axes=(0, 0, 0, None)))
    rows = []
    for batch in ((8,) if args.quick else (16, 64)):
        levels = jax.random.split(jax.random.PRNGKey(0), batch)
        key = jax.random.PRNGKey(1)
        out = {}
        for flag in (False, True):
            res = jax.block_until_ready(run(graphdef, params, env, pr, cfg, levels, key, augment=flag))  # compile
            out[flag] = (_median_time(lambda f=flag: jax.block_until_ready(
                run(graphdef, params, env, pr, cfg, levels, key, augment=f)), args.repeats), res)
        turns = int(jnp.sum(out[True][1][0].valid))
        assert turns == int(jnp.sum(out[False][1][0].valid)), "the env must play the same turns either way"
        # The splice alone: one batch of prompts with and without distractors, times the turns played.
        states = jax.vmap(env.reset)(levels)[0]
        skeys = jax.random.split(jax.random.PRNGKey(2), batch)
        on = jnp.ones((batch,), bool)
        a = jnp.full((batch,), 1, jnp.int32)
        jax.block_until_ready(prompt_fn(states, states, a, 1, skeys, on))
        jax.block_until_ready(plain_prompt_fn(states, states, a, 1))
        t_aug = _median_time(lambda: jax.block_until_ready(prompt_fn(states, states, a, 1, skeys, on)), 5)
        t_plain = _median_time(lambda: jax.block_until_ready(plain_prompt_fn(states, states, a, 1)), 5)
        max_turns = int(jnp.max(jnp.sum(out[True][1][0].valid, axis=1)))
        plain_s, aug_s = out[False][0], out[True][0]
        rows.append(dict(section="rollout", domain="sokoban", where="device", batch=batch, epsilon=80, p=1.0,
                         turns=turns, plain_s=plain_s, augmented_s=aug_s, overhead=(aug_s - plain_s) / plain_s,
                         splice_s=max(t_aug - t_plain, 0.0) * max_turns,
                         splice_share=max(t_aug - t_plain, 0.0) * max_turns / plain_s, extra_tokens_s=0.0,
                         device=str(jax.devices()[0].platform)))
    return rows


def alfworld_rows(args, chat):
    import jax
    from flax import nnx

    from agentrl_jax import augment as aug
    from agentrl_jax import generate as gen
    from agentrl_jax.domains import Tasks, make_domain
    from agentrl_jax.rollout import host_rollout
    from helpers.fixed_answer import fixed_answer_policy

    policy, n_answer = fixed_answer_policy(chat, "<action>look</action>")
    graphdef, params = nnx.split(policy)
    n = 4 if args.quick else 16
    dom = make_domain("alfworld", chat=chat, seed=0, num_workers=2, envs_per_worker=max(1, n // 2),
                      max_steps=4 if args.quick else 10, reset_timeout_s=600)
    cfg = gen.GenerationConfig(max_new_tokens=n_answer + 1, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    setting = aug.Augmentation(bank="alfworld", epsilon=300.0, p=1.0)
    tasks = Tasks(__import__("numpy").arange(n), None, "train")
    spent = {"augment_s": 0.0}

    class TimedAugmenter(aug.TextAugmenter):
        def observation(self, episode, turn, step):
            t0 = time.perf_counter()
            try:
                return super().observation(episode, turn, step)
            finally:
                spent["augment_s"] += time.perf_counter() - t0

    def play(augmented: bool):
        key = jax.random.PRNGKey(0)
        task = dom.host_task(tasks)
        if augmented:  # the same PoolTask, with the domain's augmenter (timed) in place
            task = type(task)(task.pool, task.env_ids, [int(s) for s in tasks.seeds], chat, dom.prompt_fn,
                              dom.max_steps, augmenter=TimedAugmenter(setting, key, n, dom.augment_context))
        batch, _ = host_rollout(graphdef, params, task, cfg, key, chat.tokenizer, dom.max_prompt_tokens)
        return int(batch.valid.sum())

    try:
        play(False), play(True)  # warm up: games loaded, generation buckets compiled
        times, turns = {False: [], True: []}, {}
        aug_spent = []
        for _ in range(args.repeats):
            for flag in (False, True):
                spent["augment_s"] = 0.0
                t0 = time.perf_counter()
                turns[flag] = play(flag)
                times[flag].append(time.perf_counter() - t0)
                if flag:
                    aug_spent.append(spent["augment_s"])
    finally:
        dom.close()
    plain_s, aug_s, augment_s = (statistics.median(times[False]), statistics.median(times[True]),
                                 statistics.median(aug_spent))
    return [dict(section="rollout", domain="alfworld", where="host pool", batch=n, epsilon=300, p=1.0,
                 turns=turns[True], plain_s=plain_s, augmented_s=aug_s, overhead=(aug_s - plain_s) / plain_s,
                 splice_s=augment_s, splice_share=augment_s / plain_s,
                 extra_tokens_s=max(aug_s - plain_s - augment_s, 0.0), device="cpu")]


def token_rows(args, encode, tokenizer_name):
    import jax

    import envs.distractors as D

    states = {"sokoban": _sokoban_states(4 if args.quick else 16), "alfworld": _alfworld_states(args.quick)}
    web = _webshop_states(args.quick)
    if web:
        states["webshop"] = web
    if args.sciworld:
        states["sciworld"] = _sciworld_states()
    rows = []
    for domain, items in states.items():
        for eps in (10, 30, 80, 120, 200, 300):
            added, units = [], []
            for i, (text, context) in enumerate(items):
                base = len(encode(text))
                for k in range(2 if args.quick else 4):
                    key = jax.random.PRNGKey(1000 * i + k)
                    ds = D.sample_distractors(domain, text, key, eps, **context)
                    added.append(len(encode(D.render(text, ds))) - base)
                    units.append(len(ds))
            rows.append(dict(section="tokens", domain=domain, epsilon=eps, tokenizer=tokenizer_name,
                             states=len(items), units_per_state=statistics.mean(units),
                             tokens_added=statistics.mean(added), tokens_added_min=min(added),
                             tokens_added_max=max(added), ratio=statistics.mean(added) / eps))
    return rows


def _sokoban_states(n):
    import jax

    import envs.sokoban as sk

    env = sk.Sokoban(dim=6, num_boxes=1)
    states = jax.device_get(jax.jit(jax.vmap(lambda k: env.reset(k)[0]))(jax.random.split(jax.random.PRNGKey(0), n)))
    return [(sk.render_text(jax.tree.map(lambda x, i=i: x[i], states)), {"dim": 6}) for i in range(n)]


def _alfworld_states(quick):
    from envs.alfworld import AlfWorldEnv

    env = AlfWorldEnv(split="train", max_steps=60)
    out = []
    try:
        for seed in ((0, 8) if quick else (0, 4, 8, 12, 16, 20)):
            ts = env.reset(seed)
            entities = list(ts.info.get("entities") or ())
            plan = env.expert_actions() or []
            for t, action in enumerate(plan[:4]):
                out.append((ts.observation, {"admissible_actions": list(ts.admissible_actions), "entities": entities}))
                ts = env.step(action)
    finally:
        env.close()
    return out


def _webshop_states(quick):
    """Search-results and item pages of WebShop when the env is there (its bank has one view per page kind)."""
    try:
        from envs.webshop import WebShopEnv
    except ImportError:
        return []

    def page_view(ts):  # the bank's view per page, as WebShopDomain.augment_context picks it
        return "search" if ts.info.get("page") == "results" else "detail"

    env = WebShopEnv(split="validation")
    out = []
    try:
        for seed in range(2 if quick else 6):
            ts = env.reset(seed)
            for action in (env.expert_actions() or [])[:3]:
                ts = env.step(action)
                view = page_view(ts)
                if view:
                    out.append((ts.observation, {"view": view}))
    finally:
        env.close()
    return out


def _sciworld_states():
    from envs.sciworld import SciWorldEnv

    out = []
    with SciWorldEnv(task_names=["find-animal"]) as env:
        ts = env.reset(0)
        for action in (env.expert_actions() or [])[:6]:
            out.append((ts.observation, {}))
            ts = env.step(action)
    return out


def _print(rows):
    roll = [r for r in rows if r["section"] == "rollout"]
    if roll:
        print("\n## rollout: augmentation off vs on (same keys; median seconds)")
        print("| domain | where | batch | eps | turns | plain s | augmented s | end-to-end | augment s | augment share "
              "| extra tokens s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in roll:
            print(f"| {r['domain']} | {r['where']} | {r['batch']} | {r['epsilon']} | {r['turns']} | {r['plain_s']:.3f} "
                  f"| {r['augmented_s']:.3f} | {100 * r['overhead']:+.1f}% | {r['splice_s']:.4f} "
                  f"| {100 * r['splice_share']:.2f}% | {r['extra_tokens_s']:.3f} |")
    toks = [r for r in rows if r["section"] == "tokens"]
    if toks:
        print(f"\n## tokens added per state vs eps ({toks[0]['tokenizer']} tokenizer)")
        print("| domain | eps | states | units/state | tokens added (mean) | min | max | added / eps |")
        print("|---|---|---|---|---|---|---|---|")
        for r in toks:
            print(f"| {r['domain']} | {r['epsilon']} | {r['states']} | {r['units_per_state']:.1f} | "
                  f"{r['tokens_added']:.1f} | {r['tokens_added_min']} | {r['tokens_added_max']} | {r['ratio']:.2f} |")


def main(argv=None):
    args = parse(argv)
    from transformers import AutoTokenizer

    from agentrl_jax.chat import ChatFormat
    from agentrl_jax.models.tiny import ensure_tiny_folder

    chat = ChatFormat.from_tokenizer(AutoTokenizer.from_pretrained(ensure_tiny_folder()), thinking=False)
    rows = []
    if "rollout" in args.sections:
        rows += sokoban_rows(args, chat)
        rows += alfworld_rows(args, chat)
    if "tokens" in args.sections:
        smol = os.path.join(os.environ.get("AGENTRL_CACHE", os.path.join(REPO, "cache")), "smollm2-135m-instruct")
        if os.path.exists(os.path.join(smol, "tokenizer.json")):
            tok, name = AutoTokenizer.from_pretrained(smol), "SmolLM2"
        else:
            tok, name = chat.tokenizer, "tiny"
        rows += token_rows(args, lambda s: tok.encode(s, add_special_tokens=False), name)
    _print(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
