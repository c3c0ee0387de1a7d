"""SFT JSONL records: round trip with the schema version checked, and the datamix ratio in pairs."""
import json

import numpy as np
import pytest

from agentrl_jax import sft_data


def _records(domain, n):
    return [sft_data.record(domain, i, 0, [1, 2, 3 + i], [7, 8], "expert", "p", "a") for i in range(n)]


def test_jsonl_round_trip_and_wrong_version(tmp_path):
    path = str(tmp_path / "d.jsonl")
    recs = _records("sokoban", 3)
    sft_data.write_jsonl(path, recs)
    assert sft_data.read_jsonl(path) == recs
    lines = open(path).read().splitlines()
    lines[0] = json.dumps({"schema": sft_data.SCHEMA, "version": sft_data.SCHEMA_VERSION + 1})
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="regenerate"):
        sft_data.read_jsonl(path)


def test_the_header_carries_thinking_and_tokenizer_and_sft_refuses_the_other_setting(tmp_path):
    from agentrl_jax import sft

    think, plain = str(tmp_path / "think.jsonl"), str(tmp_path / "plain.jsonl")
    sft_data.write_jsonl(think, _records("sokoban", 2), {"thinking": True, "tokenizer": "tiny"})
    sft_data.write_jsonl(plain, _records("sokoban", 2))  # a file from before the metadata
    assert sft_data.read_meta(think) == {"thinking": True, "tokenizer": "tiny"} and sft_data.read_meta(plain) == {}
    assert sft_data.read_jsonl(think) == sft_data.read_jsonl(plain)
    with pytest.raises(ValueError, match=r"written with thinking=True, this run has sft.thinking=False: set "
                                         r"THINKING = True or regenerate"):
        sft.check_sources({"a": think}, None, None, thinking=False)
    sft.check_sources({"a": think, "b": plain}, None, None, thinking=True)
    sft.check_sources({"b": plain}, None, None, thinking=False)


def test_mix_holds_the_ratio_in_pairs():
    sources = {"sciworld": _records("sciworld", 50), "alfworld": _records("alfworld", 5),
               "webshop": _records("webshop", 2)}
    out = sft_data.mix(sources, {"sciworld": 19, "alfworld": 3, "webshop": 1}, 230, np.random.default_rng(0))
    counts = {d: sum(r["domain"] == d for r in out) for d in sources}
    assert counts == {"sciworld": 190, "alfworld": 30, "webshop": 10}
    # A short source is repeated in whole passes: each of ALFWorld's 5 pairs 6 times, WebShop's 2 pairs 5 times;
    # one longer than its share gives distinct pairs.
    for d, n, times in (("alfworld", 5, 6), ("webshop", 2, 5)):
        seen = [tuple(r["prompt_ids"]) for r in out if r["domain"] == d]
        assert len(set(seen)) == n and all(seen.count(k) == times for k in set(seen))
    sci = [tuple(r["prompt_ids"]) for r in out if r["domain"] == "sciworld"]
    assert len(set(sci)) == 50 and max(sci.count(k) for k in set(sci)) - min(sci.count(k) for k in set(sci)) <= 1


def test_the_sft_log_counts_the_mix_by_source_name_and_domain():
    """ALFWorld and WebShop rollouts of one V1 run share one `source` string: the plan's counts still tell them
    apart, so the log confirms the 19:3:1 mix."""
    from agentrl_jax import sft

    shared = "rollout:outputs/study/v1@20"
    sources = {"sciworld_expert": _records("sciworld", 50),
               "alfworld_rollout": [dict(r, source=shared) for r in _records("alfworld", 5)],
               "webshop_rollout": [dict(r, source=shared) for r in _records("webshop", 2)]}
    plan = sft.sample_plan(sources, {"sciworld_expert": 19, "alfworld_rollout": 3, "webshop_rollout": 1}, 230, 0)
    assert sft._source_counts(plan) == {"sciworld_expert:sciworld": 190, "alfworld_rollout:alfworld": 30,
                                        "webshop_rollout:webshop": 10}
    no_mix = sft.sample_plan({"a": _records("sokoban", 3)}, None, 4, 0)
    assert sft._source_counts(no_mix) == {"a:sokoban": 4}


def test_pack_layout():
    s = sft_data.pack(_records("sokoban", 2), prompt_len=4, response_len=3, pad_id=0)
    assert s["ids"][1].tolist() == [0, 1, 2, 4, 7, 8, 0]
    assert s["response_mask"][1].tolist() == [1, 1, 0]
