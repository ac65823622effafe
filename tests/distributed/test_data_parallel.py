"""Two processes (CPU, gloo) against one: the multi-pass trainers under DDP and FSDP2.

For SFT, Booster, Panacea and Vaccine, one SGD step on 2 processes with per-process batch b (user)
and b_h (harmful) must give the weights of one process with batches 2b and 2b_h (cases.py). This
holds only if every gradient a trainer takes itself is averaged over the processes, the harmful
loss is token-weighted across them, the harmful loader shards one seeded global batch, and (FSDP)
norms are reduced over parameter shards; dropping any one of these moves the weights by 1e-4 or
more here, against ≤ 1e-7 for the correct code, hence ``atol=1e-6``. Every method, RepNoise too,
must leave the same weights on both processes; random perturbation must draw the same noise
whatever the number of processes.

The children are forked (as accelerate's ``debug_launcher`` does; the tiny model needs no fresh
interpreter) with one thread each, and all methods run in one launch per engine.

FSDP: accelerate turns its FSDP plugin on only for GPU-type devices (``AcceleratorState`` leaves
``MULTI_CPU`` as plain DDP), so on the CPU the model is sharded with torch's own FSDP2
``fully_shard`` before the Trainer sees it (cases.fsdp2); the trainers then work on the same
``DTensor`` parameter shards as under ``accelerate launch --config_file configs/accelerate/fsdp.yaml``.
FSDP1 is not tested: the trainers refuse it (``require_gradient_access``).
"""

from __future__ import annotations

import socket
import time

import pytest
import torch

import cases
from tolerance import assert_rel

TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(engine: str, out_dir) -> list[dict]:
    ctx = torch.multiprocessing.start_processes(
        cases.worker, args=(2, _free_port(), str(out_dir), engine), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{engine}: the 2 processes did not finish in {TIMEOUT_S} s")
    return [torch.load(out_dir / f"{engine}_rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {name: cases.one_step(name, 1, out / name) for name in cases.METHODS}


@pytest.fixture(scope="module")
def start():
    model = cases.lora_model(cases.make_tokenizer())
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def engine(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, _launch(request.param, out)


@pytest.mark.parametrize("method", cases.EQUAL_TO_ONE_PROCESS)
def test_two_processes_equal_one_with_double_batches(engine, one_process, start, method):
    name, _, ranks = engine
    ref = one_process[method]["weights"]
    moved = max(float((ref[n] - start[n]).abs().max()) for n in ref)
    assert moved > 1e-3  # the step did something
    for rank in ranks:
        assert rank[method]["sharded"] == (name == "fsdp2")
        for n in ref:
            assert_rel(rank[method]["weights"][n], ref[n], 1e-5, msg=f"{method} {n}")


@pytest.mark.parametrize("method", cases.METHODS)
def test_every_process_ends_with_the_same_weights(engine, method):
    _, _, (r0, r1) = engine
    for n, w in r0[method]["weights"].items():
        assert torch.equal(w, r1[method]["weights"][n]), f"{method} {n}"


def test_panacea_epsilon_is_the_one_process_epsilon(engine, one_process):
    _, _, ranks = engine
    ref = one_process["panacea"]["epsilon"]
    assert abs(float(torch.cat([e.flatten() for e in ref.values()]).norm()) - 0.5) < 1e-5  # ‖ε‖ = ρ
    for rank in ranks:
        for n, e in ref.items():
            assert_rel(rank["panacea"]["epsilon"][n], e, 1e-5)


@pytest.mark.parametrize("method", ["booster", "panacea"])
def test_saved_adapter_is_the_trained_one(engine, one_process, tmp_path_factory, method):
    """Only the main process writes it; under FSDP2 the shards are gathered first."""
    from safetensors.torch import load_file

    _, out, ranks = engine
    saved = load_file(str(out / engine[0] / method / "adapter" / "adapter_model.safetensors"))
    weights = ranks[0][method]["weights"]
    assert len(saved) == len(weights)
    for n, w in weights.items():
        key = n.replace(".default.", ".")
        torch.testing.assert_close(saved[key], w, rtol=0, atol=0)


def test_random_perturbation_draws_the_same_noise_on_every_process(engine):
    _, _, ranks = engine
    ref = cases.noise(1)
    for rank in ranks:
        assert len(rank["noise"]) == len(ref)
        for a, b in zip(rank["noise"], ref):
            assert torch.equal(a, b)


def test_process_helpers(engine):
    _, _, ranks = engine
    for rank in ranks:
        assert rank["map_sharded"] == [(x, x % 2) for x in range(7)]  # in order, item i on process i mod 2
        assert rank["on_main"] == "made by 0"
        assert rank["on_main_error"] == "output directory 'x' already holds a run"
