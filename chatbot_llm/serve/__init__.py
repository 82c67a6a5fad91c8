"""chatbot-llm serve: the OpenAI-compatible app (app, protocol), its scheduler, and the chat page (static/)."""
