"""Batched greedy generation (docs/protocol.md#generation, made fast).

Prompts are sorted by length (longest first, so memory peaks early), left-padded, and decoded
greedily with the KV cache; answers come back in the input order. Greedy batched decoding with
left padding gives the same tokens as one prompt at a time, up to floating-point kernel
differences (checked on the tiny model in the tests).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.templates import encode_prompt
from ..distributed import is_main


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32,
             desc: str = "generate", progress: bool = True) -> list[str]:
    enc = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out: list[str] = [""] * len(enc)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(enc), desc=desc, disable=not progress or not is_main(), leave=False)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(enc[i]) :] = torch.tensor(enc[i])
            mask[r, width - len(enc[i]) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out
