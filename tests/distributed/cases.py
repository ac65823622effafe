"""What the distributed tests run, on 2 processes (``worker``) and on one (the test process).

One optimizer step of plain SGD (the update is linear in the gradient, so a mis-scaled or
un-averaged term cannot hide behind Adam's normalisation) on a tiny LoRA model, for each method in
``METHODS``. The batches are split the way the package defines it: ``B`` user examples and ``B_H``
harmful examples *per process*, so 2 processes see the same 2·B and 2·B_H examples as one process
with batches 2·B and 2·B_H (the Trainer's sequential sampler gives process r the examples
[r·B, (r+1)·B); the harmful loader gives it slice r of the same seeded global batch). Examples
differ in length, so a loss averaged per process instead of per token would show.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from conftest import make_model, make_tokenizer
from panacea.data.base import DataSpec, Example
from panacea.data.templates import Collator, tokenize
from panacea.errors import UserError

B, B_H = 2, 2
"""Per-process user batch and harmful batch."""

USER = [
    Example("Analyze the sentiment", input="The film was wonderful and the acting was great.", output="positive"),
    Example("Analyze the sentiment", input="The plot was boring.", output="negative"),
    Example("Tell me how to do it", output="Sure, here is how to do it step by step, first this and then that."),
    Example("Analyze the sentiment", input="Lovely.", output="positive"),
]
HARM = [
    Example("Explain the steps", output="Sure, here is how: first do this, then that, then the rest."),
    Example("Write the script", output="Sure."),
    Example("Describe the method", output="Here is the method in detail, step by step, with every step."),
    Example("Tell me", output="Step one, step two."),
]

METHODS = ("sft", "booster", "panacea", "vaccine", "repnoise")
EQUAL_TO_ONE_PROCESS = ("sft", "booster", "panacea", "vaccine")
"""RepNoise's MMD and log terms do not split over examples: 2 × b is the mean of two objectives.
``lisa`` and ``safety_mix`` (mode loss) also pass when added to both tuples; they are left out to
keep the distributed tests under two minutes on a busy 2-core machine."""


class Ctx:
    """A minimal StageContext over fixed examples."""

    def __init__(self, tok):
        self.tokenizer = tok
        self.collator = Collator(tok.pad_token_id)
        self.seed = 0

    def dataset(self, spec, key):
        assert spec.name == "harm"
        return tokenize(self.tokenizer, HARM, "alpaca", 256)


def lora_model(tok):
    """The tiny model with a LoRA adapter whose B is non-zero; the same on every process."""
    from panacea.config import LoraSettings
    from panacea.models import add_adapter

    model = add_adapter(make_model(len(tok)), LoraSettings(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def method(name: str, hb: int):
    spec = DataSpec(name="harm")
    if name == "sft":
        from panacea.defenses.finetune.sft import SFT

        return SFT, None
    if name == "booster":
        from panacea.defenses.alignment.booster import Booster, BoosterConfig

        return Booster, BoosterConfig(lam=0.5, alpha=0.3, harmful_batch_size=hb, harmful_data=spec)
    if name == "panacea":
        from panacea.defenses.finetune.panacea import Panacea, PanaceaConfig

        return Panacea, PanaceaConfig(rho=0.5, lam=0.5, harmful_loss_clamp=100.0, harmful_batch_size=hb,
                                      harmful_data=spec, apply_epsilon=True, save_epsilon=True)
    if name == "vaccine":
        from panacea.defenses.alignment.vaccine import Vaccine, VaccineConfig

        return Vaccine, VaccineConfig(rho=0.5)
    if name == "repnoise":
        from panacea.defenses.alignment.repnoise import RepNoise, RepNoiseConfig

        return RepNoise, RepNoiseConfig(alpha=0.1, beta=0.01, harmful_batch_size=hb, harmful_data=spec)
    if name == "lisa":  # step 0 is an alignment-state step on the (sharded) guide batch
        from panacea.defenses.finetune.lisa import Lisa, LisaConfig

        return Lisa, LisaConfig(rho=0.5, alignment_steps=1, finetune_steps=1, alignment_data=spec,
                                alignment_batch_size=hb)
    if name == "safety_mix":  # g + weight · f with f on a (sharded) refusal batch
        from panacea.defenses.finetune.safety_mix import SafetyMix, SafetyMixConfig

        return SafetyMix, SafetyMixConfig(mode="loss", weight=0.5, safety_batch_size=hb, safety_data=spec)
    raise KeyError(name)


def one_step(name: str, processes: int, out_dir: Path, wrap=None) -> dict:
    """One SGD step of ``name``; returns the whole trainable tensors after it (and Panacea's ε)."""
    from panacea.config import TrainSettings
    from panacea.distributed import barrier
    from panacea.models import save_adapter
    from panacea.training import full_tensors, training_arguments
    from panacea.weights import is_dtensor

    tok = make_tokenizer()
    model = lora_model(tok)
    if wrap is not None:
        model = wrap(model)
    entry, cfg = method(name, B_H * 2 // processes)
    train = TrainSettings(per_device_train_batch_size=B * 2 // processes, learning_rate=0.1, optim="sgd",
                          max_grad_norm=0.0, max_steps=1, train_sampling_strategy="sequential", logging_steps=1)
    args = training_arguments(train, out_dir, seed=0, disable_tqdm=True)
    ctx = Ctx(tok)
    trainer = entry.make_trainer(model, args, tokenize(tok, USER, "alpaca", 256), ctx, cfg)
    trainer.train()
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    whole = full_tensors([p for _, p in named])  # FSDP2: gathered from the shards
    out = {"sharded": all(is_dtensor(p) for _, p in named),
           "weights": {n: t.detach().cpu().clone() for (n, _), t in zip(named, whole)}}
    save_adapter(trainer.model, out_dir / "adapter")
    barrier()  # the main process wrote the adapter and ε; the others read them after this
    if name == "panacea":
        from safetensors.torch import load_file

        out["epsilon"] = load_file(str(out_dir / "panacea_epsilon.safetensors"))
    return out


def noise(processes: int) -> list[torch.Tensor]:
    from panacea.defenses.post.random_perturbation import RandomPerturbation, RandomPerturbationConfig

    model = lora_model(make_tokenizer())
    xi, _ = RandomPerturbation.noise(model, RandomPerturbationConfig(norm=2.0, seed=7))
    return xi


def fsdp2(model):
    """Shard the model with torch's FSDP2 (``fully_shard``: each decoder layer, then the root).

    The Trainer is told the model is already sharded (as for ``from_pretrained(distributed_config=…)``):
    accelerate enables its own FSDP plugin only for GPU-type devices, so on the CPU the model is
    sharded here; the parameters the trainers see are the same ``DTensor`` shards either way.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from panacea.hooks import bare_model

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    base = bare_model(model)
    for layer in base.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    base._is_distributed_loading_by_transformers = True
    return model


def _refuse():
    raise UserError("output directory 'x' already holds a run")


def worker(rank: int, world: int, port: int, out_dir: str, engine: str) -> None:
    """One of the ``world`` processes: every method once, results to ``out_dir/rank<r>.pt``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate.state import AcceleratorState
    from transformers.utils import logging as hf_logging

    from panacea import distributed

    hf_logging.set_verbosity_error()
    AcceleratorState._reset_state(True)  # a forked child may inherit the parent's single-process state
    distributed.init()
    out = Path(out_dir)
    results = {}
    for name in METHODS:
        results[name] = one_step(name, world, out / engine / name, wrap=fsdp2 if engine == "fsdp2" else None)
    results["noise"] = noise(world)
    results["map_sharded"] = distributed.map_sharded(lambda xs: [(x, distributed.process_index()) for x in xs],
                                                     list(range(7)))
    results["on_main"] = distributed.on_main(lambda: f"made by {distributed.process_index()}")
    try:
        distributed.on_main(_refuse)
    except UserError as e:
        results["on_main_error"] = str(e)
    torch.save(results, out / f"{engine}_rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
