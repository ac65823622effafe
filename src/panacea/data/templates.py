"""Prompt templates, tokenisation with prompt labels masked, and the padding collator.

Two templates (``model.template``):

* ``alpaca`` — the papers' templates, verbatim, with and without an input
  (docs/protocol.md#prompt-templates).
* ``chat`` — the tokenizer's own chat template with one user turn (instruction, a blank line, the
  input) and the generation prompt. The papers use no chat template; for an instruct checkpoint
  such as the embedded SmolLM2 the chat template is what the model was trained on.

The target is ``output + eos``. Prompt and target are tokenised separately and concatenated, so the
prompt's token ids are exactly those used at generation time; the prompt's label positions are −100
(loss on response tokens only, docs/protocol.md#prompt-templates). Sequences are truncated at
``max_length`` from the right; a sample whose prompt fills the whole length keeps no target token
and is counted in ``Tokenized.no_target``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Example

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def format_prompt(tokenizer, ex: Example, template: str, system: str | None = None) -> str:
    if template == "alpaca":
        t = ALPACA_INPUT if ex.input else ALPACA_NO_INPUT
        return t.format(instruction=ex.instruction, input=ex.input)
    content = f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction
    msgs = [{"role": "user", "content": content}]
    if system is not None:
        msgs.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a formatted prompt, identical for training and generation."""
    specials = not text.startswith(tokenizer.bos_token or "\0")  # chat templates insert BOS themselves
    return tokenizer(text, add_special_tokens=specials).input_ids


@dataclass
class Tokenized(torch.utils.data.Dataset):
    """A list of ``{input_ids, labels}`` features (a map-style torch dataset)."""

    features: list[dict]
    no_target: int = 0

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def tokenize(tokenizer, examples: list[Example], template: str, max_length: int,
             system: str | None = None) -> Tokenized:
    feats, empty = [], 0
    eos = tokenizer.eos_token or ""
    for ex in examples:
        src = encode_prompt(tokenizer, format_prompt(tokenizer, ex, template, system))
        tgt = tokenizer(ex.output + eos, add_special_tokens=False).input_ids
        ids = (src + tgt)[:max_length]
        labels = ([-100] * len(src) + tgt)[:max_length]
        if all(x == -100 for x in labels):
            empty += 1
        feats.append({"input_ids": ids, "labels": labels})
    return Tokenized(feats, empty)


class Collator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with −100.

    The attention mask comes from the true lengths, not from ``input_ids != pad``: with
    ``pad == eos`` (SmolLM2, Llama without [PAD]) the latter would mask the target's own EOS.
    """

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
