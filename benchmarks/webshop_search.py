"""WebShop search: our in-process BM25 (bm25s + PyStemmer) next to WebShop's Lucene, on Lucene's own top 50.

    python benchmarks/webshop_search.py                 # table + timings
    python benchmarks/webshop_search.py --json out.json

`data/webshop/search_reference_lucene.json` holds Lucene's top-50 hits (Anserini defaults, the 1000-product
index) for 674 queries: the 415 synthetic instructions and 13 human instructions (each with its target product)
and the 246 Amazon queries the products were scraped under. Columns, per query source:
- recall@10 / recall@50: queries whose target product is among the top 10 / 50 hits (instruction queries);
- overlap@10: |our top 10 ∩ Lucene's top 10| / |Lucene's top 10|, mean over queries (all sources);
- overlap@50: the same for the top 50.
Lucene's recall is read off its own hits. Also printed: the time to build the catalog + index (what a worker
pays once), the tagger's load time, and search time per query. Target: recall within 2 points of Lucene's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def measure(data_path: str | None = None) -> dict:
    from envs.webshop import data as wsdata
    from envs.webshop import reward as wsreward
    from envs.webshop.search import SearchEngine

    t0 = time.perf_counter()
    catalog = wsdata.load_catalog(data_path)
    t1 = time.perf_counter()
    engine = SearchEngine([wsdata.search_text(p) for p in catalog.products])
    t2 = time.perf_counter()
    tagger = wsreward.TitleTagger()
    t3 = time.perf_counter()
    asins = [p["asin"] for p in catalog.products]
    with open(os.path.join(catalog.data_path, "search_reference_lucene.json")) as f:
        ref = json.load(f)["queries"]

    rows: dict[str, dict] = {}
    times = []
    for q in ref:
        t = time.perf_counter()
        ours = [asins[i] for i in engine.search(q["query"])]
        times.append(time.perf_counter() - t)
        lucene = [h[0] for h in q["hits"]]
        for src in (q["source"], "all"):
            r = rows.setdefault(src, {"queries": 0, "targets": 0, "ours@10": 0, "ours@50": 0, "lucene@10": 0,
                                      "lucene@50": 0, "overlap10": [], "overlap50": []})
            r["queries"] += 1
            if lucene:
                r["overlap10"].append(len(set(ours[:10]) & set(lucene[:10])) / len(lucene[:10]))
                r["overlap50"].append(len(set(ours) & set(lucene)) / len(lucene))
            if "target_asin" in q:
                tg = q["target_asin"]
                r["targets"] += 1
                r["ours@10"] += tg in ours[:10]
                r["ours@50"] += tg in ours
                r["lucene@10"] += tg in lucene[:10]
                r["lucene@50"] += tg in lucene
    # instruction queries (synthetic + human) together: the recall targets of the issue are over these 428
    instr = {k: 0 for k in ("targets", "ours@10", "ours@50", "lucene@10", "lucene@50")}
    for src, r in rows.items():
        if src != "all" and r["targets"]:
            for k in instr:
                instr[k] += r[k]
    for r in rows.values():
        r["overlap10"] = statistics.mean(r["overlap10"]) if r["overlap10"] else None
        r["overlap50"] = statistics.mean(r["overlap50"]) if r["overlap50"] else None
    return {"rows": rows, "instructions": instr, "load_s": t1 - t0, "index_s": t2 - t1, "tagger_s": t3 - t2,
            "search_ms": 1e3 * statistics.median(times), "docs": len(asins), "queries": len(ref),
            "tagger": tagger.package}


def table(m: dict) -> str:
    pct = lambda a, b: f"{a}/{b} ({100 * a / b:.1f}%)" if b else "-"  # noqa: E731
    lines = [f"{'queries':<34}{'n':>5}  {'recall@10 ours':>20}{'Lucene':>20}  {'recall@50 ours':>20}{'Lucene':>20}"
             f"{'overlap@10':>12}{'overlap@50':>12}"]
    for src, r in sorted(m["rows"].items(), key=lambda kv: (kv[0] == "all", kv[0])):
        t = r["targets"]
        lines.append(f"{src:<34}{r['queries']:>5}  {pct(r['ours@10'], t):>20}{pct(r['lucene@10'], t):>20}  "
                     f"{pct(r['ours@50'], t):>20}{pct(r['lucene@50'], t):>20}"
                     f"{100 * (r['overlap10'] or 0):>11.1f}%{100 * (r['overlap50'] or 0):>11.1f}%")
    i = m["instructions"]
    lines.append(f"{'instructions (synthetic + human)':<34}{i['targets']:>5}  {pct(i['ours@10'], i['targets']):>20}"
                 f"{pct(i['lucene@10'], i['targets']):>20}  {pct(i['ours@50'], i['targets']):>20}"
                 f"{pct(i['lucene@50'], i['targets']):>20}")
    d10 = 100 * (i["ours@10"] - i["lucene@10"]) / i["targets"]
    d50 = 100 * (i["ours@50"] - i["lucene@50"]) / i["targets"]
    lines.append(f"\nrecall ours - Lucene: @10 {d10:+.1f} points, @50 {d50:+.1f} points (target: within 2 points)")
    lines.append(f"catalog load {m['load_s']:.2f} s + index build {m['index_s']:.2f} s over {m['docs']} products "
                 f"(target < 5 s per worker); tagger ({m['tagger']}) load {m['tagger_s']:.2f} s; "
                 f"search {m['search_ms']:.2f} ms/query (median over {m['queries']})")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-path", default=None, help="WebShop data folder (default: data/webshop)")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    args = ap.parse_args(argv)
    m = measure(args.data_path)
    print(table(m))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(m, f, indent=1)


if __name__ == "__main__":
    main()
