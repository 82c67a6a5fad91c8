"""The PyTorch baseline: transformers' own generate() behind the runtime's generate_ids interface.

It is what the seed ran, and the reference for parity tests and benchmarks. Only the export extra
installs torch; the ONNX runtime never imports this module.

Where generate() and the ONNX runtime may differ, by design:
- generate() draws sampled tokens from torch's random stream (one per batch, seeded with
  torch.manual_seed), the runtime from one numpy stream per prompt; sampled text differs.
- in a padded batch, generate()'s repetition penalty also counts the pad token (EOS) of the
  shorter rows; the runtime counts only a row's own tokens, so its rows stay batch invariant.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import UsageError
from chatbot_llm.runtime.generator import RowResult, TokenCallback
from chatbot_llm.runtime.kv import left_pad


class TorchBaseline:
    def __init__(self, checkpoint: Path, eos_token_id: int, context_length: int, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise UsageError(
                "--backend torch needs torch and transformers: pip install torch==2.13.0 'chatbot-llm[export]'"
            ) from None
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--backend torch --device cuda: torch {torch.__version__} here has no CUDA "
                             "(a CPU build, or no NVIDIA driver); use --device cpu")
        self.device = device
        try:
            self.model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True).eval().to(device)
        except Exception as exc:  # transformers raises OSError, ValueError, RuntimeError, safetensors errors
            raise UsageError(f"cannot load {checkpoint} with transformers: {str(exc).splitlines()[0]}") from None
        self.eos, self.context_length = eos_token_id, context_length
        # generate() fills "default-valued" fields of the config it is given from the model's own
        # generation_config.json (so do_sample=False would turn back into the model's True). The
        # model's defaults are already resolved into our GenerationConfig, so it gets a blank one.
        from transformers import GenerationConfig as HFGenerationConfig

        self.model.generation_config = HFGenerationConfig(eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                                                          bos_token_id=eos_token_id)

    def _generation_config(self, config: GenerationConfig, max_new_tokens: int):
        from transformers import GenerationConfig as HFGenerationConfig

        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=config.do_sample,
            repetition_penalty=config.repetition_penalty,
            no_repeat_ngram_size=config.no_repeat_ngram_size,
            eos_token_id=self.eos,
            pad_token_id=self.eos,
            bos_token_id=self.eos,
        )
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        else:  # unset, so generate() does not warn that they have no effect
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return HFGenerationConfig(**kwargs)

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        stream_keys: Sequence[int] | None = None,
        on_token: TokenCallback | None = None,
    ) -> list[RowResult]:
        """generate() on the whole batch when every row fits the context, else one row at a time."""
        budgets = [min(config.new_tokens_for(len(p)), self.context_length - len(p)) for p in prompts]
        # a row that stops at its budget says "length", one cut short by the context "context"
        reasons = ["length" if b == config.new_tokens_for(len(p)) else "context" for p, b in zip(prompts, budgets)]
        if all(len(p) + max(budgets) <= self.context_length for p in prompts):
            return self._generate(prompts, budgets, reasons, config, on_token)
        results = []
        for row in range(len(prompts)):
            callback = None if on_token is None else (lambda _r, t, row=row: on_token(row, t))
            results += self._generate([prompts[row]], [budgets[row]], [reasons[row]], config, callback)
        return results

    def _generate(self, prompts, budgets, reasons, config, on_token) -> list[RowResult]:
        torch = self.torch
        ids, mask, _ = left_pad(prompts, self.eos)  # generate() derives the same position ids itself
        width = ids.shape[1]
        if config.seed is not None:
            torch.manual_seed(config.seed)
        streamer = _RowStreamer(on_token, self.eos, budgets) if on_token else None
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.from_numpy(ids).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
                generation_config=self._generation_config(config, max(budgets)),
                streamer=streamer,
            )
        seconds = time.perf_counter() - started
        results = []
        for row, (budget, reason) in enumerate(zip(budgets, reasons)):
            new = out[row, width:].tolist()
            result = RowResult(seconds=seconds)
            for token in new[:budget]:
                if token == self.eos:
                    result.finish_reason = "eos"
                    break
                result.tokens.append(token)
            if not result.finish_reason:
                result.finish_reason = reason
            results.append(result)
        return results


class _RowStreamer:
    """A transformers streamer that reports each row's tokens until its EOS or budget."""

    def __init__(self, on_token: TokenCallback, eos: int, budgets: Sequence[int]):
        self.on_token, self.eos, self.budgets = on_token, eos, list(budgets)
        self.counts = [0] * len(budgets)
        self.done = [False] * len(budgets)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token == self.eos or self.counts[row] >= self.budgets[row]:
                self.done[row] = True
                continue
            self.counts[row] += 1
            self.on_token(row, token)

    def end(self) -> None:
        pass
