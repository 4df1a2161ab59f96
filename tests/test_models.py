import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from maxrl.models import (
    MAZE_IDS,
    PRESETS,
    VOCAB,
    build_model,
    check_maze_vocabulary,
    load_maze_tokenizer,
    maze_tokenizer,
)
from maxrl.tasks.maze import MazeTask, format_prompt, generate_maze, verify

# The ids of the tokenizer of the paper's maze checkpoint.
NAMED_IDS = {
    "<pad>": 0,
    "<bos>": 1,
    "<eos>": 2,
    "<unk>": 3,
    "GRID_START": 4,
    "GRID_END": 5,
    "PATH_START": 6,
    "DONE": 7,
    "PATH": 8,
    "WALL": 9,
    "GOAL": 10,
    "START": 11,
    "NEWLINE": 12,
    "UP": 13,
    "DOWN": 14,
    "LEFT": 15,
    "RIGHT": 16,
}
SPARE_IDS = {"\n": 17, **{f"RESERVED_{i}": 18 + i for i in range(14)}}
# The ids maxrl used before it took the paper's: same 32 entries, other order.
OLD_IDS = {
    **{tok: i for i, tok in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "GRID_START"])},
    **{"GRID_END": 5, "PATH_START": 6, "START": 7, "GOAL": 8, "WALL": 9, "PATH": 10},
    **{"NEWLINE": 11, "UP": 12, "DOWN": 13, "LEFT": 14, "RIGHT": 15, "DONE": 16},
    **{f"<reserved_{i}>": 17 + i for i in range(15)},
}


@pytest.fixture(scope="module")
def tokenizer():
    return maze_tokenizer()


def test_vocabulary_ids(tokenizer):
    assert len(tokenizer) == 32 and len(VOCAB) == 32
    vocab = tokenizer.get_vocab()
    assert vocab == {**NAMED_IDS, **SPARE_IDS} == MAZE_IDS | SPARE_IDS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.unk_token_id) == (2, 3)
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2, 3]


def test_encode_adds_nothing_and_maps_unknown_words(tokenizer):
    text = "<bos> GRID_START WALL lava NEWLINE GRID_END PATH_START"
    expected = [1, 4, 9, 3, 12, 5, 6]
    assert tokenizer(text).input_ids == expected
    assert tokenizer(text, add_special_tokens=False).input_ids == expected
    assert tokenizer("  UP\n\tDONE ").input_ids == [13, 7]  # "\n" is whitespace, never id 17


def test_decode_is_read_back_by_the_verifier(tokenizer):
    assert tokenizer.decode([13, 7, 2]) == "UP DONE <eos>"
    assert tokenizer.decode([13, 7, 2, 0, 0], skip_special_tokens=True) == "UP DONE"
    item = MazeTask(size=9).test_items(1)[0]
    prompt_ids = tokenizer(item.prompt).input_ids
    assert len(prompt_ids) == len(item.prompt.split()) and 3 not in prompt_ids
    assert tokenizer.decode(prompt_ids) == item.prompt
    answer_ids = tokenizer(item.target).input_ids + [tokenizer.eos_token_id, 0, 0]
    completion = tokenizer.decode(answer_ids)
    assert completion == item.target + " <eos> <pad> <pad>"
    assert verify(item.prompt, completion) == 1.0


@pytest.mark.parametrize("loader", [AutoTokenizer.from_pretrained, load_maze_tokenizer])
def test_tokenizer_save_and_reload(tokenizer, tmp_path, loader):
    tokenizer.save_pretrained(tmp_path)
    loaded = loader(tmp_path)
    text = format_prompt(generate_maze(17, 0)) + " DOWN RIGHT DONE <eos> <pad> junk"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    ids = [13, 14, 15, 16, 7, 2, 0]
    assert loaded.decode(ids) == tokenizer.decode(ids) == "UP DOWN LEFT RIGHT DONE <eos> <pad>"
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    paper = build_model("paper")
    assert 3_700_000 <= _count(paper) <= 4_100_000
    # Embedding 32*256 + 4 layers * 984,064 + final norm 256 (lm_head tied, counted once).
    assert _count(paper) == 32 * 256 + 4 * 984_064 + 256 == 3_944_704
    assert _count(build_model("small")) == 989_312
    assert _count(build_model("tiny")) == 19_744
    cfg = paper.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (4, 256, 1024)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (4, 2, 32)
    assert cfg.tie_word_embeddings
    assert paper.lm_head.weight.data_ptr() == paper.model.embed_tokens.weight.data_ptr()
    assert isinstance(paper, Qwen2ForCausalLM)
    assert paper.generation_config.eos_token_id == 2 and paper.generation_config.pad_token_id == 0


def test_longest_sequence_fits(tokenizer):
    prompt = format_prompt(generate_maze(17, 0))
    assert len(tokenizer(prompt).input_ids) == 310
    for preset in PRESETS:
        assert build_model(preset).config.max_position_embeddings >= 310 + 180


def test_build_model_options():
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model("tiny", seed=4)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_model("tiny", seed=9)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched

    wide = build_model("tiny", vocab_size=40, num_hidden_layers=3, attn_implementation="eager")
    assert wide.config.vocab_size == 40 and wide.config.num_hidden_layers == 3
    assert wide.config._attn_implementation == "eager"
    assert build_model("tiny").config._attn_implementation == "sdpa"
    with pytest.raises(
        ValueError, match=r"unknown model preset 'huge'.*\['paper', 'small', 'tiny'\]"
    ):
        build_model("huge")
    with pytest.raises(ValueError, match=r"unknown Qwen2Config field\(s\) \['hiden_size'\]"):
        build_model("tiny", hiden_size=64)


def test_save_and_reload_gives_identical_logits(tokenizer, tmp_path):
    model = build_model("tiny", seed=1).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in weights  # the tied matrix is stored once

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    # AutoTokenizer would build a Qwen2 BPE here, next to the model's config.json.
    reloaded_tokenizer = load_maze_tokenizer(tmp_path)
    prompts = [it.prompt for it in MazeTask(size=9).test_items(2)]
    batch = reloaded_tokenizer(prompts, return_tensors="pt")
    assert batch.input_ids.tolist() == tokenizer(prompts, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        expected = model(**batch).logits
        got = loaded(**batch).logits
    assert expected.shape == (2, len(prompts[0].split()), 32)
    assert torch.equal(got, expected)


def test_generation_round_trips_through_text(tokenizer):
    model = build_model("tiny", seed=2).eval()
    item = MazeTask(size=9).test_items(1)[0]
    inputs = tokenizer([item.prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_ids = out[0, inputs.input_ids.shape[1] :].tolist()
    assert len(new_ids) >= 1
    text = tokenizer.decode(new_ids)
    assert tokenizer(text).input_ids == new_ids
    assert verify(item.prompt, text) == verify(item.prompt, text + " <pad>")


def test_load_tokenizer_rejects_other_vocabularies(tmp_path):
    other = maze_tokenizer()
    other.add_tokens(["EXTRA"])
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not the 32-id maze tokenizer"):
        load_maze_tokenizer(tmp_path)


def _word_tokenizer(vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def _old_vocabulary_folder(path):
    """A tiny maze model saved with the ids maxrl used before it took the paper's."""
    build_model("tiny", seed=0).save_pretrained(path)
    _word_tokenizer(OLD_IDS).save_pretrained(path)
    return path


def test_a_folder_with_the_old_vocabulary_is_refused(tmp_path):
    from maxrl.config import load_config
    from maxrl.models.loading import load_policy
    from maxrl.tasks import TaskConfig, make_task
    from maxrl.train import rl
    from maxrl.train.config import TrainConfig

    folder = _old_vocabulary_folder(tmp_path / "old")
    message = (
        f"the tokenizer of '{folder}' gives id 16 to 'DONE', where the maze vocabulary "
        r"\(the paper's ids\) has id 7, .*retrain the model with maxrl.models.maze_tokenizer\(\)"
    )
    with pytest.raises(ValueError, match=message):
        load_maze_tokenizer(folder)
    _, tokenizer = load_policy(str(folder))  # loads: the 32 entries fit the model...
    assert len(tokenizer) == 32 and tokenizer.get_vocab()["DONE"] == 16
    with pytest.raises(ValueError, match=message):  # ...but a maze task refuses it
        make_task(TaskConfig(), tokenizer)
    cfg = load_config(
        TrainConfig, None, [f"model.init={folder}", f"run.out_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ValueError, match=message):
        rl.train(cfg)
    no_newline = {tok: i for tok, i in NAMED_IDS.items() if tok != "NEWLINE"}
    with pytest.raises(ValueError, match="of 'the given tokenizer' has no word 'NEWLINE', where"):
        check_maze_vocabulary(_word_tokenizer(no_newline))
    with pytest.raises(ValueError, match="of 'mine' has no word 'NEWLINE', where .* has id 12"):
        check_maze_vocabulary(_word_tokenizer(no_newline), "mine")
    make_task(TaskConfig(name="maze"), maze_tokenizer())  # the current ids pass


# The files of the paper's maze checkpoint, but for the weights: a Qwen2 config saved in bf16 by
# transformers 4.x, a WordLevel tokenizer.json (whitespace pre-tokenizer, the four special
# tokens added), special_tokens_map.json and tokenizer_config.json. The model is shrunk to
# the tiny preset's shape; the paper's is hidden 256, MLP 1024, 4 heads, 512 positions.
PAPER_STYLE_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "dtype": "bfloat16",
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_types": ["full_attention", "full_attention"],
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 32,
}


def _special(content, **extra):
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"content": content, **flags, **extra}


def _paper_style_folder(path):
    import json

    from transformers import Qwen2Config

    path.mkdir()
    dims = {k: v for k, v in PAPER_STYLE_CONFIG.items() if k not in ("dtype", "torch_dtype")}
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**dims)).to(torch.bfloat16).save_pretrained(path)
    (path / "config.json").write_text(json.dumps(PAPER_STYLE_CONFIG))
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": 0})
    )
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, **_special(tok), "special": True} for i, tok in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": NAMED_IDS | SPARE_IDS, "unk_token": "<unk>"},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    roles = dict(zip(["pad_token", "bos_token", "eos_token", "unk_token"], specials))
    (path / "special_tokens_map.json").write_text(
        json.dumps({role: _special(tok) for role, tok in roles.items()})
    )
    tokenizer_config = {
        "added_tokens_decoder": {
            str(i): {**_special(tok), "special": True} for i, tok in enumerate(specials)
        },
        **roles,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def test_a_folder_shaped_like_the_papers_checkpoint_trains(tmp_path, tokenizer):
    from maxrl.cli import main as cli_main
    from maxrl.config import load_config
    from maxrl.metrics import read_metrics
    from maxrl.models.loading import load_policy, stop_ids
    from maxrl.tasks import TaskConfig, make_task
    from maxrl.train import rl
    from maxrl.train.config import TrainConfig

    folder = _paper_style_folder(tmp_path / "ckpt")
    stored = load_file(folder / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model, loaded = load_policy(str(folder))
    assert isinstance(model, Qwen2ForCausalLM) and model.dtype == torch.float32
    assert torch.equal(model.model.embed_tokens.weight, stored["model.embed_tokens.weight"].float())
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert load_maze_tokenizer(folder).get_vocab() == tokenizer.get_vocab()
    item = MazeTask(size=17).test_items(1)[0]
    text = f"{item.prompt} {item.target} <eos>"
    assert loaded(text, add_special_tokens=False).input_ids == tokenizer(text).input_ids
    assert loaded.decode(tokenizer(item.target).input_ids) == item.target
    assert stop_ids(loaded) == (2,)
    make_task(TaskConfig(), loaded)  # the vocabulary check passes

    # model.init=that folder, on the paper's data format: one RL step runs end to end
    data = tmp_path / "data"
    args = ["size=7", "count=60", "seed=0", "format=official", "test_size=4", f"out={data}"]
    assert cli_main(["maze-data", *args]) == 0
    run = tmp_path / "run"
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.init={folder}",
            f"run.out_dir={run}",
            f"task.data={data / 'train.json'}",
            f"task.test_data={data / 'test.json'}",
            "task.test_count=4",
            "rollout.prompts_per_step=2",
            "rollout.rollouts_per_prompt=4",
            "rollout.max_new_tokens=8",
            "eval.prompts=4",
            "eval.samples=4",
            "run.steps=1",
            "run.tensorboard=false",
            "run.progress=false",
        ],
    )
    with pytest.warns(UserWarning, match="test mazes also appear in the training file"):
        summary = rl.train(cfg)
    assert summary["after"]["step"] == 1
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/reward_mean" in r] == [
        1
    ]


def test_cache_argument_follows_the_models_forward():
    import inspect

    from maxrl.models.loading import cache_argument, output_cache

    model = build_model("tiny", seed=0)
    params = inspect.signature(type(model).forward).parameters
    expected = "cache" if "cache" in params else "past_key_values"
    assert cache_argument(model) == expected

    class Wrapped:  # a peft-style wrapper hides the forward behind *args, **kwargs
        def __init__(self, inner):
            self.inner = inner

        def get_base_model(self):
            return self.inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    assert cache_argument(Wrapped(model)) == expected

    class Older(torch.nn.Module):  # transformers before the rename
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_argument(Older()) == "past_key_values"

    # the cache a forward returns, passed back under that name, continues the sequence exactly
    ids = torch.tensor([[1, 4, 9, 8, 12]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        out = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], use_cache=True, **{expected: output_cache(out)})
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=0)
