"""The Sokoban env a gin env file (`gin/envs/<name>.gin`) configures, built outside any run."""
import os

import gin

import envs.sokoban as sk

GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gin")


def sokoban_from_gin(name: str) -> sk.Sokoban:
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    with gin.unlock_config():
        gin.parse_config_files_and_bindings([os.path.join(GIN_DIR, "envs", f"{name}.gin")], [], skip_unknown=True)
    try:
        return sk.Sokoban()
    finally:
        gin.clear_config()
