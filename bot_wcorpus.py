"""The seed's entry point, kept working: python bot_wcorpus.py [--model_path DIR] [--prompt_file F] [--output_file F].

Same flags, defaults, console output and output-file format as the original script, now running on
the ONNX runtime (the checkpoint is exported once, on first use). For everything else, and to change
generation parameters without editing code, use the chatbot-llm command.
"""

import argparse
import sys

from chatbot_llm.batchio import check_prompt_file, format_record, read_prompts, write_record
from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import ChatbotError
from chatbot_llm.models import DEFAULT_MODEL, load_text_generator


def run_chat(model_path, prompt_file=None, output_file=None):
    if prompt_file:
        check_prompt_file(prompt_file)
    generator = load_text_generator(model_path)
    # the seed's GENERATION_CONFIG, exactly: its in-source values won over the model's own defaults
    config = GenerationConfig()
    print(f" Loaded model from {model_path}")
    out = open(output_file, "a", encoding="utf-8") if output_file else None
    try:
        if prompt_file:
            print(f" Running prompts from {prompt_file}")
            for number, prompt in read_prompts(prompt_file):
                response = generator.generate([prompt], config, stream_keys=[number])[0].response
                print(f"\n Prompt {number}: {prompt}")
                print(f" Response {number}: {response}")
                if out:
                    write_record(out, format_record("text", {"prompt": prompt, "response": response}, False))
        else:
            print(" Manual mode. Type your prompts (type 'exit' to quit).")
            turn = 0
            while True:
                try:
                    prompt = input("You: ")
                except (EOFError, KeyboardInterrupt):
                    print()
                    break
                if prompt.lower() in {"exit", "quit"}:
                    break
                if not prompt.strip():
                    continue
                turn += 1
                response = generator.generate([prompt], config, stream_keys=[turn])[0].response
                print(f"DreamBot: {response}")
                if out:
                    write_record(out, format_record("text", {"prompt": prompt, "response": response}, False))
    finally:
        if out:
            out.close()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_path", type=str, default=DEFAULT_MODEL,
                        help="Path to your fine-tuned GPT-2 model (or a known name: dream, email)")
    parser.add_argument("--prompt_file", type=str, default=None, help="Optional path to .txt file with prompts")
    parser.add_argument("--output_file", type=str, default=None,
                        help="Optional file path to save all interactions")
    args = parser.parse_args(argv)
    try:
        run_chat(args.model_path, args.prompt_file, args.output_file)
    except ChatbotError as exc:
        print(f"bot_wcorpus.py: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        print(f"bot_wcorpus.py: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
