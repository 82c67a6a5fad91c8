"""`chatbot-llm bench`: every backend on one checkpoint, each in its own process, side by side."""
