"""`chatbot-llm sweep`: a grid of generation parameters over models and prompts, with metrics and a report."""
