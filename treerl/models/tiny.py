"""Architecture and tokenizer of the embedded model: a character-level Qwen2 of a few million
parameters."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
CHARACTERS = (
    list("0123456789+-*/=()<>.,:;?!'\"_ \n")
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
)


def build_tokenizer(extra: str = "") -> PreTrainedTokenizerFast:
    """One token per character of CHARACTERS, then of `extra` (a task's other characters, appended
    so that the ids of the base set never move): a byte-level BPE without merges, the pipeline of
    Qwen2's tokenizer.

    AutoTokenizer loads a tokenizer saved beside a qwen2 config.json as Qwen2Tokenizer, which
    rebuilds the byte-level pre-tokenizer; the vocabulary is therefore written in byte-level form
    (space is 'Ġ', newline 'Ċ') so that both loaders split text the same way.
    """
    as_unicode = bytes_to_unicode()
    characters = CHARACTERS + [c for c in dict.fromkeys(extra) if c not in CHARACTERS]
    if any(ord(c) > 255 for c in characters):
        raise ValueError("the character tokenizer covers single-byte characters only")
    vocab = {
        token: i
        for i, token in enumerate(SPECIAL_TOKENS + [as_unicode[ord(c)] for c in characters])
    }
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=512,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)
