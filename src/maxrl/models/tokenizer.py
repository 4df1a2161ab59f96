"""The maze word tokenizer: one id per word of the maze text, 32 ids in all, the paper's ids.

Ids, as in the tokenizer of the paper's maze checkpoint (arXiv 2602.02710, section 5):
``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, GRID_START 4, GRID_END 5, PATH_START 6,
DONE 7, PATH 8, WALL 9, GOAL 10, START 11, NEWLINE 12, UP 13, DOWN 14, LEFT 15, RIGHT 16
(the order of :data:`maxrl.tasks.maze.MAZE_TOKENS`); ids 17 to 31 are spare: a ``"\\n"`` word at
17 (which whitespace splitting never produces) and ``RESERVED_0`` ... ``RESERVED_13`` at 18 to
31, so that the vocabulary equals the paper's word for word. A model trained with either
tokenizer reads the other's text.

Text is split on whitespace only and decoded with single spaces, so ``decode(encode(text))``
gives back ``" ".join(text.split())`` and a decoded completion is read by
:func:`maxrl.tasks.maze.verify` token for token. No token is added on encoding: maze prompts
carry ``<bos>`` literally and the trainer tokenizes with ``add_special_tokens=False``.

The result is a standard ``PreTrainedTokenizerFast`` saved with ``save_pretrained(dir)``. Reload
it with :func:`load_maze_tokenizer`. ``AutoTokenizer.from_pretrained(dir)`` round-trips it only in a
directory without a model: next to a Qwen2 ``config.json`` (a checkpoint), transformers 5.x picks
``Qwen2Tokenizer`` whatever ``tokenizer_config.json`` says and rebuilds a byte-level BPE over this
vocabulary, which silently encodes a whole maze prompt as the single id of ``<bos>``.

Before the vocabulary took the paper's ids, maxrl numbered the maze words differently (DONE was
16) with the same 32 entries, so a folder saved then loads without error and misreads every
word; :func:`check_maze_vocabulary` refuses such a folder wherever a maze task meets a tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from maxrl.tasks.maze import MAZE_TOKENS

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOCAB_SIZE = 32
# The spare ids of the paper's tokenizer: they keep its embedding shape (vocab 32).
SPARE_TOKENS = ("\n", *(f"RESERVED_{i}" for i in range(14)))
VOCAB = (*SPECIAL_TOKENS, *MAZE_TOKENS, *SPARE_TOKENS)
assert len(VOCAB) == VOCAB_SIZE
# Every word a maze prompt or answer can hold, with its id.
MAZE_IDS = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *MAZE_TOKENS))}


def maze_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """The 32-id word-level maze tokenizer with the paper's ids (pad 0, bos 1, eos 2, unk 3)."""
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


def check_maze_vocabulary(tokenizer, source: str | Path | None = None) -> None:
    """Raise ValueError unless ``tokenizer`` gives every maze word and special token its id.

    ``source`` names the tokenizer in the message (default: the folder it was loaded from). The
    message names the first word, in id order, whose id differs, with both ids.
    """
    where = str(source or getattr(tokenizer, "name_or_path", "") or "the given tokenizer")
    vocab = tokenizer.get_vocab()
    for word, expected in MAZE_IDS.items():
        got = vocab.get(word)
        if got != expected:
            has = "has no word" if got is None else f"gives id {got} to"
            raise ValueError(
                f"the tokenizer of {where!r} {has} {word!r}, where the maze vocabulary (the "
                f"paper's ids) has id {expected}, so a maze model would misread its text; "
                f"retrain the model with maxrl.models.maze_tokenizer() (a folder saved before "
                f"maxrl took the paper's ids has DONE at 16 and cannot be used)"
            )
    if tokenizer.eos_token_id != MAZE_IDS["<eos>"]:
        raise ValueError(
            f"the tokenizer of {where!r} has eos token id {tokenizer.eos_token_id}, not "
            f"{MAZE_IDS['<eos>']} (<eos>); save it with eos_token='<eos>'"
        )


def load_maze_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The maze tokenizer saved in ``path`` (a tokenizer or a whole checkpoint directory).

    Refused unless its vocabulary is the 32-id maze vocabulary (see :func:`check_maze_vocabulary`).
    """
    from maxrl.models.loading import load_tokenizer

    tokenizer = load_tokenizer(path)
    check_maze_vocabulary(tokenizer, path)
    expected = {tok: i for i, tok in enumerate(VOCAB)}
    if tokenizer.get_vocab() != expected:
        raise ValueError(
            f"the tokenizer in {str(path)!r} is not the 32-id maze tokenizer; "
            f"save maxrl.models.maze_tokenizer() there"
        )
    return tokenizer
