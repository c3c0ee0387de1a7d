"""WebShop's reward pieces against what WebShop itself runs: the fuzzy matcher and the title tagger.

    python benchmarks/webshop_reward.py [--goals 500]

- Fuzzy matching: WebShop pins thefuzz 0.19 without python-Levenshtein, so its token-set ratio is built on
  difflib's SequenceMatcher; ours is rapidfuzz's (the Indel ratio). Below, a difflib token-set ratio written
  here from thefuzz 0.19's documented rule (token intersection vs each side's sorted remainder, best of three
  ratios, rounded) is compared with `envs.webshop.reward.similarity` on every pair the reward would compare when
  one of the first `--goals` validation goals is bought as a product of the same Amazon query: (product
  attribute, goal attribute) and (colour-normalised option value, colour-normalised goal option) pairs. Printed:
  how often the "> 85" match decision agrees, and the score differences.
- Tagger: the nouns of all catalog titles with the pipeline as WebShop loads it (every component) and as we
  load it (no NER, no lemmatizer): how many titles get a different noun set.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def difflib_token_set(a, b) -> int:
    """thefuzz 0.19's token_set_ratio on difflib (no python-Levenshtein), on the same processed text as ours."""
    from envs.webshop.reward import fuzzy_text

    pa, pb = fuzzy_text(a), fuzzy_text(b)
    if not pa or not pb:
        return 0
    ta, tb = set(pa.split()), set(pb.split())
    common = " ".join(sorted(ta & tb))
    ca = (common + " " + " ".join(sorted(ta - tb))).strip()
    cb = (common + " " + " ".join(sorted(tb - ta))).strip()
    ratio = lambda x, y: int(round(100 * difflib.SequenceMatcher(None, x, y).ratio()))  # noqa: E731
    return max(ratio(common, ca), ratio(common, cb), ratio(ca, cb))


def reward_pairs(catalog, n_goals: int) -> set:
    from envs.webshop import reward as R

    by_query: dict[str, list] = {}
    for p in catalog.products:
        by_query.setdefault(p["query"], []).append(p)
    pairs = set()
    for g in catalog.split_goals("validation")[:n_goals]:
        for p in by_query.get(g["query"], []):
            pairs.update((pa, a) for a in g["attributes"] for pa in p["Attributes"])
            values = [R.normalize_color(v) for vs in p["options"].values() for v in vs]
            pairs.update((v, R.normalize_color(o)) for o in R.goal_option_items(g["goal_options"]) for v in values)
    return pairs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--goals", type=int, default=500, help="validation goals whose comparisons are checked")
    args = ap.parse_args(argv)
    from envs.webshop import data as wsdata
    from envs.webshop import reward as R

    catalog = wsdata.load_catalog()
    pairs = reward_pairs(catalog, args.goals)
    t = time.perf_counter()
    ours = {pq: R.similarity(*pq) for pq in pairs}
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = {pq: difflib_token_set(*pq) for pq in pairs}
    t_ref = time.perf_counter() - t
    agree = sum((ours[k] > R.MATCH_THRESHOLD) == (ref[k] > R.MATCH_THRESHOLD) for k in pairs)
    diffs = [abs(ours[k] - ref[k]) for k in pairs]
    print(f"fuzzy match decisions (> {R.MATCH_THRESHOLD}): rapidfuzz vs difflib token-set agree on {agree}/{len(pairs)} "
          f"pairs ({100 * agree / len(pairs):.2f}%); scores differ on {sum(d > 0 for d in diffs)} pairs, by at most "
          f"{max(diffs)}; {1e6 * t_ours / len(pairs):.1f} vs {1e6 * t_ref / len(pairs):.1f} µs per pair")

    import importlib

    module = importlib.import_module(R.TAGGER_PACKAGE)
    full, ours_nlp = module.load(), module.load(exclude=list(R.TAGGER_EXCLUDE))
    titles = [p["Title"] for p in catalog.products]
    nouns = lambda nlp: [frozenset(t.text.lower() for t in d if t.pos_ in R.NOUN_TAGS) for d in nlp.pipe(titles)]  # noqa: E731
    t = time.perf_counter()
    a = nouns(full)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    b = nouns(ours_nlp)
    t_small = time.perf_counter() - t
    same = sum(x == y for x, y in zip(a, b))
    print(f"title nouns ({R.TAGGER_PACKAGE} {full.meta.get('version')}): full pipeline vs ours (no "
          f"{', '.join(R.TAGGER_EXCLUDE)}) identical on {same}/{len(titles)} titles; "
          f"{1e3 * t_full / len(titles):.1f} vs {1e3 * t_small / len(titles):.1f} ms per title (batched)")


if __name__ == "__main__":
    main()
