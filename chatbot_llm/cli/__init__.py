"""chatbot-llm: the Click command line. It parses and prints; generation lives in runtime/.

One module per idea: app (the group, shared options, error handling), generate (chat, batch),
manage (export, models), bench, sweep, train, serve (serve, logs).
"""

from chatbot_llm.cli import bench, generate, manage, serve, sweep, train  # noqa: F401  (they register commands)
from chatbot_llm.cli.app import cli, main

__all__ = ["cli", "main"]
