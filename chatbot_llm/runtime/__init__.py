"""ONNX Runtime generation: needs onnxruntime, tokenizers and numpy; never torch or transformers."""
