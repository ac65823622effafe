"""Panacea's Trainer in a fine-tuning script of your own, in place of ``transformers.Trainer``.

    python examples/api_trainer.py                          # the embedded SmolLM2-135M-Instruct
    python examples/api_trainer.py --model ./my-model --max-steps 40 --output-dir runs/api_trainer

The script fine-tunes a LoRA adapter on the training side of examples/my_task.jsonl with
``panacea.PanaceaTrainer`` (arXiv 2501.18100) and saves the adapter. What the trainer needs beyond
a plain ``transformers.Trainer`` (docs/api.md has the same list for every defense's trainer):

* ``panacea=PanaceaConfig(...)``: ρ (‖ε‖), λ, the clamp on h(w+ε) and the harmful batch size.
  Its ``harmful_data`` field is read by ``panacea run`` only; here the data is passed directly:
* ``harmful_dataset``: the defender's own harmful examples (prompt → harmful answer), tokenized
  like the training data. The trainer draws them in batches of ``harmful_batch_size`` with its own
  ``data_collator``, from a loader seeded with ``args.seed``. They must not be the user's harmful
  samples nor your evaluation prompts.
* Trainable parameters to perturb (here the LoRA weights; ε lives on them).
* Features with ``input_ids`` and ``labels`` (−100 on the prompt, so the loss is the answer's), and
  a collator that pads ``labels`` with −100 and masks by length (``DataCollatorForSeq2Seq`` here).
* No DeepSpeed: the trainer writes ``.grad`` itself (DDP and FSDP2 work, docs/api.md).

At the end of ``train()`` the trainer adds ε to the trainable weights and writes it to
``<output-dir>/panacea_epsilon.safetensors``: the model you save afterwards is the defended one; do
not add ε a second time.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

import panacea

ROOT = Path(__file__).resolve().parents[1]


def encode(tokenizer, prompt: str, answer: str, max_length: int) -> dict:
    """One example: the chat-formatted prompt, then the answer and EOS; loss on the answer only."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    p = tokenizer(text, add_special_tokens=False).input_ids
    a = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids
    return {"input_ids": (p + a)[:max_length], "labels": ([-100] * len(p) + a)[:max_length]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="a model folder or hub id (default: the embedded SmolLM2)")
    ap.add_argument("--data", default=str(ROOT / "examples" / "my_task.jsonl"), help="your task (JSONL)")
    ap.add_argument("--output-dir", default="runs/api_trainer")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--harmful-n", type=int, default=50, help="defender's harmful examples (pyrit_harmful)")
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args(argv)

    from panacea.models import resolve  # `embedded` → the converted model folder in the cache

    path = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))

    # your task's training side (the held-out side is for measuring FA, docs/own_task.md) and the
    # defender's harmful set, here the offline pyrit pool from row 100 on
    task = panacea.load_data("jsonl", path=args.data, holdout=0.3, split="train")
    harmful = panacea.load_data("pyrit_harmful", start=100, n=args.harmful_n)
    train = [encode(tokenizer, ex.instruction, ex.output, args.max_length) for ex in task]
    harmful = [encode(tokenizer, ex.instruction, ex.output, args.max_length) for ex in harmful]

    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=8,
        learning_rate=5e-4, lr_scheduler_type="constant", logging_steps=5, save_strategy="no",
        report_to="none", seed=43, use_cpu=not torch.cuda.is_available(),
    )
    trainer = panacea.PanaceaTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        panacea=panacea.PanaceaConfig(rho=1.0, lam=1e-3, harmful_loss_clamp=5.0, harmful_batch_size=4),
        harmful_dataset=harmful,
    )
    out = trainer.train()  # ε is added to the LoRA weights at the end
    record = {**trainer.stage_record(), "train_loss": out.training_loss}
    if not math.isfinite(out.training_loss):
        raise SystemExit(f"the training loss is {out.training_loss}")
    model.save_pretrained(Path(args.output_dir) / "adapter")
    print(f"ε norm {record['epsilon_norm']:.4g}, applied: {record['epsilon_applied']}, "
          f"clamped on {record['clamp_active_fraction']:.0%} of the steps; adapter → {args.output_dir}/adapter")
    return record


if __name__ == "__main__":
    main()
