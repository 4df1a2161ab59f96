"""The maze word tokenizer: one id per token of the maze text, 32 ids in all (MAXRL.md section 5).

Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the maze words in the order of
:data:`maxrl.tasks.maze.MAZE_TOKENS` (GRID_START 4 ... DONE 16), then ``<reserved_0>`` ... up to
id 31. Text is split on whitespace only and decoded with single spaces, so
``decode(encode(text))`` gives back ``" ".join(text.split())`` and a decoded completion is read
by :func:`maxrl.tasks.maze.verify` token for token. No token is added on encoding: maze prompts
carry ``<bos>`` literally and the trainer tokenizes with ``add_special_tokens=False``.

The result is a standard ``PreTrainedTokenizerFast`` saved with ``save_pretrained(dir)``. Reload
it with :func:`load_tokenizer`. ``AutoTokenizer.from_pretrained(dir)`` round-trips it only in a
directory without a model: next to a Qwen2 ``config.json`` (a checkpoint), transformers 5.x picks
``Qwen2Tokenizer`` whatever ``tokenizer_config.json`` says and rebuilds a byte-level BPE over this
vocabulary, which silently encodes a whole maze prompt as the single id of ``<bos>``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from maxrl.tasks.maze import MAZE_TOKENS

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOCAB_SIZE = 32
# Spare ids keep the embedding shape of the paper's model (vocab 32) and room for new words.
VOCAB = (
    *SPECIAL_TOKENS,
    *MAZE_TOKENS,
    *(f"<reserved_{i}>" for i in range(VOCAB_SIZE - len(SPECIAL_TOKENS) - len(MAZE_TOKENS))),
)


def maze_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """The 32-id word-level maze tokenizer (pad 0, bos 1, eos 2, unk 3)."""
    backend = Tokenizer(
        models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The maze tokenizer saved in ``path`` (a tokenizer or a whole checkpoint directory)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    expected = {tok: i for i, tok in enumerate(VOCAB)}
    if tokenizer.get_vocab() != expected:
        raise ValueError(
            f"the tokenizer in {str(path)!r} is not the 32-id maze tokenizer; "
            f"save maxrl.models.maze_tokenizer() there"
        )
    return tokenizer
