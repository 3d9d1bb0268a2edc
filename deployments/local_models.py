"""Generate a tiny random Llama model and tokenizer on disk, so vLLM has something to serve.

No weights can be downloaded here (and CI should not depend on a hub), so the local tier runs
a model made on the spot: Llama architecture, random weights, a byte-level BPE tokenizer
trained on a fixed in-repo corpus, and a chat template. Everything is seeded, so the same
call gives byte-identical files. Its answers are nonsense; the plumbing around it is real.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_OUT = Path(".doka/models/tiny-llama")

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# ChatML-like; ends an assistant turn with <|end|>, which is also the eos token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# A small fixed corpus: enough text for a few hundred BPE merges over English-ish input.
_CORPUS = [
    "The gateway routes each request to the cheapest model that will answer it well.",
    "Ray Serve runs the ingress, the router, the egress and the vLLM model servers.",
    "A fallback chain tries the local model first, then the external providers.",
    "Tokens per second and time to first token are the numbers that matter for latency.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea, the wind and the stars at night.",
    "Explain how a transformer model predicts the next token from the previous ones.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Hello! How can I help you today? Please answer in one sentence.",
    "Summarize the following text in three bullet points for a busy reader.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, yes no maybe, true false null.",
]


class TinyModelSpec(BaseModel):
    """Shape of the generated model; head_dim = hidden_size / num_attention_heads must be >= 64
    because vLLM's CPU attention backend rejects smaller heads."""

    hidden_size: int = Field(128, ge=64)
    num_attention_heads: int = Field(2, ge=1)
    num_hidden_layers: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=1)
    vocab_size: int = Field(512, ge=300, description="BPE target size (256 byte symbols + merges + specials)")
    max_position_embeddings: int = Field(1024, ge=64)
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _train_tokenizer(spec: TinyModelSpec):
    """A byte-level BPE tokenizer (any input text encodes, no <unk>) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(out: str | Path = DEFAULT_OUT, spec: TinyModelSpec | None = None, force: bool = False) -> Path:
    """Write config, safetensors weights, tokenizer and chat template to `out`; returns the path.

    Idempotent: an existing complete model with the same spec is left alone unless `force`.
    """
    spec = spec or TinyModelSpec()
    if spec.head_dim < 64:
        raise ValueError(f"head_dim {spec.head_dim} < 64: vLLM's CPU attention needs head_dim >= 64")
    out = Path(out)
    marker = out / "doka_tiny_spec.json"
    spec_json = spec.model_dump_json()
    if not force and marker.exists() and marker.read_text() == spec_json and (out / "model.safetensors").exists():
        return out

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out)
    marker.write_text(spec_json)
    return out


def fingerprint(path: str | Path) -> str:
    """sha256 over the generated files, to check that generation is deterministic."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def describe(path: str | Path) -> dict:
    cfg = json.loads((Path(path) / "config.json").read_text())
    keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "head_dim")
    return {k: cfg.get(k) for k in keys}
