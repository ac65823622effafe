"""Batched greedy generation (left padding, KV cache) gives the same answers as one prompt at a time."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from panacea.data.base import Example
from panacea.data.templates import format_prompt
from panacea.eval.generate import generate


def test_batched_equals_single(tiny_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    exs = [Example("Tell me a story"), Example("Analyze the sentiment", input="The film was great."),
           Example("Hi"), Example("Explain step by step how the plot was boring, but the soundtrack was lovely.")]
    prompts = [format_prompt(tiny_tokenizer, e, "chat") for e in exs]
    prompts += ["The film was", "Sure, here is how to", "I'm sorry"]  # raw text: non-blank answers
    batched = generate(model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate(model, tiny_tokenizer, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # the random model does produce text
