"""txt corpus -> GPT-2 checkpoint, with transformers' Trainer."""
