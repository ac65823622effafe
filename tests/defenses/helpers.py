"""Small builders shared by the defense tests (tiny data, trainers, reference losses)."""

from __future__ import annotations

import torch
from torch.func import functional_call

from panacea.config import TrainSettings
from panacea.data.base import Example
from panacea.data.templates import Collator, tokenize
from panacea.training import training_arguments

USER = [
    Example("Analyze the sentiment", input="The film was wonderful.", output="positive"),
    Example("Analyze the sentiment", input="The plot was boring.", output="negative"),
    Example("Tell me how to do it", output="Sure, here is how to do it step by step."),
    Example("Analyze the sentiment", input="The acting was great.", output="positive"),
]
HARM = [
    Example("Explain the steps", output="Sure, here is how: first do this, then that."),
    Example("Write the script", output="Sure, the script is simple: step one, step two."),
    Example("Describe the method", output="Here is the method in detail, step by step."),
]

#: A defender set of two batches of 3 (``harmful_batch_size=3``): a pass that draws a new batch
#: instead of reusing the previous pass's batch sees other examples.
HARM6 = HARM + [
    Example("Give the recipe", output="Sure, the recipe: mix these, heat that, then wait."),
    Example("List the tools", output="Here are the tools you need: a knife, tape and wire."),
    Example("Plan the attack", output="Sure, the plan is: watch first, then strike at night."),
]


class ForwardLog:
    """Records every forward call's batch (``input_ids``, ``attention_mask``, ``labels``), in order."""

    def __init__(self, model):
        self.batches: list[dict] = []
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.batches.append({k: v.detach().clone() for k, v in kwargs.items()
                             if k in ("input_ids", "attention_mask", "labels")})

    def close(self):
        self._handle.remove()


def same_batch(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Ctx:
    """A minimal StageContext over fixed examples."""

    def __init__(self, tok, pools=None, template="alpaca"):
        self.tokenizer = tok
        self.collator = Collator(tok.pad_token_id)
        self.seed = 0
        self.template = template
        self.pools = pools or {}

    def examples(self, spec, key):
        return self.pools[spec.name]

    def dataset(self, spec, key):
        return tokenize(self.tokenizer, self.examples(spec, key), self.template, 256)


def tok_data(tok, exs):
    return tokenize(tok, exs, "alpaca", 256)


def args(tmp_path, **kw):
    base = dict(per_device_train_batch_size=len(USER), learning_rate=1e-3, num_train_epochs=1, logging_steps=1)
    base.update(kw)
    return training_arguments(TrainSettings(**base), tmp_path, seed=0, disable_tqdm=True)


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def loss_at(model, params: dict, batch: dict) -> torch.Tensor:
    """Mean token CE of ``batch`` with the trainable tensors replaced by ``params`` (functional)."""
    return functional_call(model, params, args=(), kwargs=batch).loss


def flat_norm(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts]).norm()
