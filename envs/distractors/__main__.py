"""Show one real state plain and augmented.

    python -m envs.distractors --domain sokoban --epsilon 80 --seed 0
    python -m envs.distractors --domain alfworld --epsilon 300 --seed 0      # a vendored game (data/alfworld)
    python -m envs.distractors --domain sciworld --epsilon 60 --seed 0       # needs scienceworld + Java
    python -m envs.distractors --domain webshop --epsilon 30 --seed 0        # a results page (data/webshop)
    python -m envs.distractors --domain alfworld --bank cross_domain --epsilon 60   # a Sokoban state on a monitor

The seed picks the level / game / task and seeds the distractors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from envs.distractors.bank import bank_names, load_bank
from envs.distractors.sample import check_epsilon, count_units, render, sample_distractors

DOMAINS = ("sokoban", "alfworld", "sciworld", "webshop")
_REPO_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "alfworld")


class Unavailable(RuntimeError):
    """The domain's environment cannot run here (missing package, runtime or data)."""


def sokoban_state(seed: int, dim: int = 6, num_boxes: int = 1) -> tuple[str, dict]:
    import jax

    from envs.sokoban import Sokoban, render_text

    env = Sokoban(dim=dim, num_boxes=num_boxes)
    state, _ = jax.jit(env.reset)(jax.random.PRNGKey(seed))  # compiled: much faster than eager
    return render_text(state), {"dim": dim}


def alfworld_state(seed: int, data_path: str | None, split: str = "train") -> tuple[str, dict]:
    try:
        from envs.alfworld import AlfWorldEnv

        data_path = data_path or os.environ.get("ALFWORLD_DATA") or os.path.normpath(_REPO_DATA)
        env = AlfWorldEnv(split=split, data_path=data_path)
        step = env.reset(seed)
    except (ImportError, ValueError) as e:
        raise Unavailable(f"ALFWorld is not available here: {e}") from None
    try:
        return step.observation, {"admissible_actions": list(step.admissible_actions),
                                  "entities": list(step.info.get("entities") or ())}
    finally:
        env.close()


def sciworld_state(seed: int) -> tuple[str, dict]:
    try:
        import scienceworld  # noqa: F401
    except ImportError:
        raise Unavailable("ScienceWorld is not installed: pip install scienceworld (and a Java 11+ runtime on PATH)")
    if shutil.which("java") is None:
        raise Unavailable("ScienceWorld needs a Java 11+ runtime on PATH (e.g. apt-get install openjdk-17-jre-headless)")
    from envs.sciworld import SciWorldEnv

    with SciWorldEnv(include_objects=False) as env:
        return env.reset(seed).observation, {}


def webshop_state(seed: int, view: str | None) -> tuple[str, dict]:
    """A results page (view "search") or, with --view detail, the item page the expert opens first."""
    try:
        from envs.webshop import WebShopEnv

        env = WebShopEnv(split="validation")
    except (ImportError, ValueError, OSError) as e:
        raise Unavailable(f"WebShop is not available here: {e}") from None
    try:
        env.reset(seed)
        plan = env.expert_actions() or []
        step = env.step(plan[0])  # the search: a results page
        if view == "detail" and len(plan) > 1:
            step = env.step(plan[1])  # the target product's item page
        return step.observation, {"view": "search" if step.info.get("page") == "results" else "detail"}
    finally:
        env.close()


def domain_state(domain: str, seed: int, args) -> tuple[str, dict]:
    if domain == "sokoban":
        return sokoban_state(seed, args.dim, args.boxes)
    if domain == "alfworld":
        return alfworld_state(seed, args.data_path, args.split)
    if domain == "webshop":
        return webshop_state(seed, args.view)
    return sciworld_state(seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envs.distractors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=DOMAINS, required=True)
    ap.add_argument("--epsilon", type=float, default=80, help="injected volume in tokens (0 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bank", default=None, help=f"a bank name {list(bank_names())} or a JSON file; default: the domain's")
    ap.add_argument("--view", default=None, help="the bank's view, for banks with several (webshop: search, detail)")
    ap.add_argument("--dim", type=int, default=6, help="sokoban: room size")
    ap.add_argument("--boxes", type=int, default=1, help="sokoban: number of boxes")
    ap.add_argument("--split", default="train", help="alfworld: split")
    ap.add_argument("--data-path", default=None, help="alfworld: data folder (default $ALFWORLD_DATA, else data/alfworld)")
    args = ap.parse_args(argv)
    eps = int(args.epsilon) if float(args.epsilon).is_integer() else args.epsilon
    try:
        bank = load_bank(args.bank or args.domain)
        check_epsilon(eps)  # before starting an env
        text, context = domain_state(args.domain, args.seed, args)
        kinds = {p.kind for v in bank.views for p in v.parts}
        if "monitor" in kinds:  # show another domain's state on the monitor
            other = "sokoban" if args.domain != "sokoban" else "alfworld"
            context["other_states"] = [(other, domain_state(other, args.seed, args)[0])]
        if "coords" in kinds and args.domain != "sokoban":
            raise ValueError(f"bank {bank.name!r} places coordinates outside a grid room; use it with --domain sokoban")
        if args.view:
            context["view"] = args.view
        ds = sample_distractors(bank, text, args.seed, eps, **context)
    except Unavailable as e:
        print(f"{args.domain}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    aug = render(text, ds)
    units = ", ".join(f"{k}={v}" for k, v in count_units(bank, eps, context.get("view")).items())
    print(f"domain {args.domain} | bank {bank.name} (v{bank.version}) | epsilon {eps} | seed {args.seed} | "
          f"units: {units}")
    print(f"--- plain ({len(text)} chars, {len(text.split())} words)")
    print(text)
    print(f"--- augmented ({len(aug)} chars, {len(aug.split())} words; +{len(aug) - len(text)} chars)")
    print(aug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
