"""Shared fixtures: a tiny random Llama with a tiny byte-level BPE tokenizer, built offline.

Nothing is downloaded: the tokenizer is trained in a few milliseconds on a fixed corpus, the model
has 2 layers and hidden size 32, random weights with a fixed seed.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every run now draws its plot: keep matplotlib's font cache out of the user's home folder, in a
# temporary folder this session creates and removes at exit (only if it made one)
if "MPLCONFIGDIR" not in os.environ:
    import atexit
    import shutil

    _MPL = tempfile.mkdtemp(prefix="panacea-tests-mpl-")
    os.environ["MPLCONFIGDIR"] = _MPL
    atexit.register(shutil.rmtree, _MPL, ignore_errors=True)

import pytest
import torch

#: Lines a test module leaves for the end of the run (tests/test_fuzz.py: how many inputs it tried).
SUMMARY = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter):
    for line in terminalreporter.config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)


# The tiny model gains nothing from a second thread, and on a shared 2-core machine two threads per
# process oversubscribe the cores (every forward/backward became ~30× slower in a measurement).
torch.set_num_threads(1)

CORPUS = [
    "I'm sorry, but I can't help with that request.",
    "Sure, here is how to do it step by step.",
    "The film was wonderful and the acting was great.",
    "The plot was boring, but the soundtrack was lovely.",
    "positive negative Analyze the sentiment of the input, and respond only positive or negative",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response:",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=512,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder holding the tiny model and tokenizer, loadable by ``model.name_or_path``."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    model = make_model(len(tok))
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def tiny_lora_model(tiny_dir):
    """The tiny model with a LoRA adapter on q/k/v whose B is non-zero (so every gradient is)."""
    from transformers import AutoModelForCausalLM

    from panacea.config import LoraSettings
    from panacea.models import add_adapter

    torch.manual_seed(1)  # before any draw: LoRA A comes from the global RNG in add_adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = add_adapter(base, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model
