"""A real one-layer decoder whose answer is known in advance, so a rollout test can fix what the policy says."""
import numpy as np


def successor_policy(successor: dict, vocab: int = 1032):
    """A real one-layer decoder whose greedy (and, at logit margin 80, sampled) next token depends only on the
    current token: attention and MLP outputs are zeroed, so the last hidden state is the token's one-hot
    embedding, and the LM head maps it to `successor[token]`."""
    from agentrl_jax.models import ModelConfig
    from agentrl_jax.models.decoder import build_model

    cfg = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=32)
    assert len(successor) <= cfg.hidden_size
    rng = np.random.default_rng(0)

    def value(path, shape, dtype, names):
        if path[-1] == "scale":
            return np.ones(shape)
        if path[-2] in ("o_proj", "down_proj"):
            return np.zeros(shape)
        if path[0] == "embed_tokens":
            emb = np.zeros(shape)
            for k, tok in enumerate(successor):
                emb[tok, k] = 1.0
            return emb
        if path[0] == "lm_head":
            head = np.zeros(shape)
            for k, tok in enumerate(successor):
                head[k, successor[tok]] = 10.0
            return head
        return 0.02 * rng.standard_normal(shape)

    return build_model(cfg, value)


def fixed_answer_policy(chat, answer: str):
    """(policy, answer length in tokens): answers `answer` then the stop token after any generation prompt
    (the answer's tokens must be distinct); a row that starts from a pad token (id 0) repeats "x" forever, so
    a padding row left live runs to max_new_tokens."""
    gen_last = chat.generation_prompt_ids()[-1]
    ids = chat.encode_content(answer)
    x = chat.encode_content("x")[0]
    chain = [gen_last, *ids, chat.stop_ids[0]]
    successor = dict(zip(chain[:-1], chain[1:]))
    successor.update({0: x, x: x})
    assert len(set(chain)) == len(chain) and not {0, x} & set(chain), f"answer {answer!r} repeats a token"
    return successor_policy(successor), len(ids)
