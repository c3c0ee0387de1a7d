"""Environments for agentrl_jax, usable on their own (this package never imports agentrl_jax).

- `envs.sokoban`: a JAX-native Sokoban (pure reset/step under jit and vmap).
- `envs.interface`: the small interface every text environment implements and the trainer relies on.
- `envs.pool`: a robust subprocess pool of text environments.
- `envs.alfworld`, `envs.sciworld`: adapters for ALFWorld and ScienceWorld.
"""
