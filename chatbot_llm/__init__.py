"""chatbot_llm: run small fine-tuned GPT-2 models fast on a CPU over ONNX Runtime."""

__version__ = "0.1.0"
