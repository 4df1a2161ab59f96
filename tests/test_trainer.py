"""The RL trainer end to end on tiny models: updates, resume, PPO equivalence, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from maxrl import advantages
from maxrl.cli import main as cli_main
from maxrl.config import ConfigError, load_config
from maxrl.metrics import read_metrics
from maxrl.models import build_model
from maxrl.models.loading import load_policy
from maxrl.tasks.maze import MazeTask
from maxrl.train import rl, update
from maxrl.train.checkpoints import latest_checkpoint
from maxrl.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class FirstMoveTask(MazeTask):
    """Maze prompts; reward 1 when the completion starts with a move (p ~ 1/8 for a random tiny
    model), so groups hold successes and failures from the first step."""

    def __init__(self, fail_on: str | None = None):
        super().__init__(size=7, test_count=4)
        self.fail_on = fail_on

    def verify(self, items, completions):
        out = []
        for c in completions:
            words = c.split()
            if self.fail_on is not None and words[:1] == [self.fail_on]:
                raise RuntimeError("verifier broke")
            out.append(float(bool(words) and words[0] in ("UP", "DOWN", "LEFT", "RIGHT")))
        return out


def tiny_cfg(out_dir, init, *overrides) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"model.init={init}",
            f"run.out_dir={out_dir}",
            "task.maze_size=7",
            "task.test_count=4",
            "rollout.prompts_per_step=4",
            "rollout.rollouts_per_prompt=8",
            "rollout.max_new_tokens=8",
            "eval.prompts=4",
            "eval.samples=8",
            "eval.every=2",
            "run.steps=4",
            "run.checkpoint_every=2",
            "run.tensorboard=false",
            "run.progress=false",
            "optim.lr=3e-3",
            *overrides,
        ],
    )


def full_batch(groups, pad_id: int):
    """Right-padded prompt + response rows of a rollout batch, written here independently of
    the trainer: (input_ids, attention_mask, response_mask)."""
    seqs = [
        groups.prompt_ids[row // groups.group_size] + groups.rollouts.tokens[row, :length].tolist()
        for row, length in enumerate(groups.lengths.tolist())
    ]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        attn[row, : len(seq)] = 1
        start = len(groups.prompt_ids[row // groups.group_size])
        resp[row, start : len(seq)] = True
    return ids, attn, resp


def _deterministic(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_every_trainable_parameter_changes(tmp_path, tiny_init):
    before = {n: p.clone() for n, p in load_policy(tiny_init)[0].named_parameters()}
    cfg = tiny_cfg(tmp_path, tiny_init, "run.steps=3")
    rl.train(cfg, task=FirstMoveTask())
    after = dict(load_policy(str(latest_checkpoint(tmp_path)))[0].named_parameters())
    unchanged = [n for n, p in after.items() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if "train/reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(0 < r["train/reward_mean"] < 1 for r in train)
    assert all(r["train/grad_norm"] > 0 and math.isfinite(r["train/loss"]) for r in train)
    assert all(0 < r["train/entropy"] <= math.log(32) for r in train)
    assert train[-1]["train/rollouts"] == 3 * 4 * 8


def test_resume_after_a_crash_replays_the_same_run(tmp_path, tiny_init, monkeypatch):
    full = tmp_path / "full"
    rl.train(tiny_cfg(full, tiny_init, "run.steps=6"), task=FirstMoveTask())

    crashed = tmp_path / "crashed"
    real = rl.optimise

    def crash_at_5(*args, step, **kwargs):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return real(*args, step=step, **kwargs)

    monkeypatch.setattr(rl, "optimise", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        rl.train(tiny_cfg(crashed, tiny_init, "run.steps=6"), task=FirstMoveTask())
    assert latest_checkpoint(crashed).name == "step_0000004"
    monkeypatch.setattr(rl, "optimise", real)
    rl.train(tiny_cfg(crashed, tiny_init, "run.steps=6"), task=FirstMoveTask())

    a = _deterministic(read_metrics(full / "metrics.jsonl"))
    b = _deterministic(read_metrics(crashed / "metrics.jsonl"))
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert a == b
    wa = load_policy(str(latest_checkpoint(full)))[0].state_dict()
    wb = load_policy(str(latest_checkpoint(crashed)))[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_crash_while_saving_leaves_the_last_checkpoint_intact(tmp_path, tiny_init, monkeypatch):
    const = "optim.schedule=constant"  # a resume with more steps (a decaying schedule refuses one)
    rl.train(tiny_cfg(tmp_path, tiny_init, "run.steps=2", const), task=FirstMoveTask())
    good = latest_checkpoint(tmp_path)
    real_save = torch.save

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        rl.train(tiny_cfg(tmp_path, tiny_init, "run.steps=4", const), task=FirstMoveTask())
    monkeypatch.setattr(torch, "save", real_save)
    assert latest_checkpoint(tmp_path) == good
    load_policy(str(good))  # still loads


def test_ppo_with_one_epoch_and_minibatch_equals_the_on_policy_gradient(tmp_path, tiny_init):
    """One epoch, one minibatch: the clipped-ratio update equals plain REINFORCE with the group
    advantage, -(1/tokens) sum_i A_i sum_t log pi, computed here by hand."""
    from maxrl.groups import make_rollout_sampler, sample_groups
    from maxrl.rollout import SamplingParams

    model, tok = load_policy(tiny_init)
    task = FirstMoveTask()
    items = task.train_items(4, seed=3)
    groups = sample_groups(
        model,
        tok,
        task,
        items,
        8,
        make_rollout_sampler("kv"),
        SamplingParams(8, stop_token_ids=(tok.eos_token_id,)),
        torch.Generator().manual_seed(0),
    )
    adv = advantages.compute("maxrl", groups.rewards)
    assert adv.shape == (4, 8) and adv.abs().sum() > 0

    def grads_after(cfg):
        m, _ = load_policy(tiny_init)
        if cfg.model.gradient_checkpointing:
            m.gradient_checkpointing_enable()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        rl.optimise(m, opt, groups, adv, cfg.algo, cfg.optim, micro_batch_size=256, seed=0, step=1)
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    m, _ = load_policy(tiny_init)
    ids, attn, resp = full_batch(groups, tok.pad_token_id)
    # the reference: one full forward over every prompt + response
    logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = resp[:, 1:].float()
    loss = -(adv.reshape(-1, 1) * logp * mask).sum() / mask.sum()
    loss.backward()
    manual = {n: p.grad for n, p in m.named_parameters()}

    on_policy = grads_after(tiny_cfg(tmp_path, tiny_init, "optim.grad_clip=0"))
    no_sharing = grads_after(
        tiny_cfg(tmp_path, tiny_init, "optim.grad_clip=0", "model.gradient_checkpointing=true")
    )
    for n in manual:
        torch.testing.assert_close(on_policy[n], manual[n], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(no_sharing[n], manual[n], rtol=1e-4, atol=1e-6)


def test_ppo_first_pass_matches_on_policy(tmp_path, tiny_init):
    """With ratio = exp(logp - sampling logp) ~ 1, the first PPO minibatch gradient equals the
    on-policy gradient to sampler/forward float agreement."""
    from maxrl.train.loss import policy_loss

    logp = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    old = logp.detach().clone()
    adv = torch.randn(6, dtype=torch.float64)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 3:] = False
    g = []
    for on_policy in (True, False):
        out = policy_loss(
            logp,
            old,
            adv,
            mask,
            agg="token_mean",
            denom=float(mask.sum()),
            clip_eps=0.2,
            on_policy=on_policy,
        )
        (grad,) = torch.autograd.grad(out.loss, logp)
        g.append(grad)
    torch.testing.assert_close(g[0], g[1], rtol=0, atol=1e-15)
    want = -(adv[:, None] * mask) / mask.sum()
    torch.testing.assert_close(g[0], want, rtol=0, atol=1e-15)


def test_verifier_that_throws_scores_zero_and_the_run_goes_on(tmp_path, tiny_init):
    with pytest.warns(UserWarning, match="verifier raised"):
        rl.train(tiny_cfg(tmp_path, tiny_init, "run.steps=2"), task=FirstMoveTask(fail_on="UP"))
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/reward_mean" in r]
    assert sum(r["train/verifier_errors"] for r in train) > 0
    assert len(train) == 2


def test_nan_loss_is_skipped_then_stops_with_the_checkpoint_intact(
    tmp_path, tiny_init, monkeypatch
):
    real = update.policy_loss
    calls = {"step": 0}

    def nan_from_step_3(*args, **kwargs):
        out = real(*args, **kwargs)
        if calls["step"] >= 3:
            out.loss = out.loss * float("nan")
        return out

    real_opt = rl.optimise

    def tracking(*args, step, **kwargs):
        calls["step"] = step
        return real_opt(*args, step=step, **kwargs)

    monkeypatch.setattr(update, "policy_loss", nan_from_step_3)
    monkeypatch.setattr(rl, "optimise", tracking)
    cfg = tiny_cfg(
        tmp_path, tiny_init, "run.steps=8", "run.checkpoint_every=1", "run.max_nan_steps=3"
    )
    with pytest.warns(UserWarning, match="non-finite"):
        with pytest.raises(rl.NonFiniteLossError, match="3 consecutive.*step 5.*step_0000004"):
            rl.train(cfg, task=FirstMoveTask())
    # skipped steps leave the weights of step 2 untouched, and those are what was saved since
    good = latest_checkpoint(tmp_path)
    assert good.name == "step_0000004"
    model, _ = load_policy(str(good))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["train/skipped"] for r in records if "train/skipped" in r] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "override,match",
    [
        ("algo.estimator=maxrll", "unknown advantage estimator 'maxrll'"),
        ("algo.params={T: 9}", "T=9 exceeds the group size N=8"),
        ("algo.lossagg=token_mean", "unknown config key 'algo.lossagg'"),
        ("algo.loss_agg=mean", "loss_agg must be one of"),
        ("rollout.rollouts_per_prompt=1", "at least 2 rollouts"),
        ("sft.eval_every=-1", r"sft.eval_every must be >= 0 \(0: every eval.every steps\); got -1"),
    ],
)
def test_bad_config_raises_clearly(tmp_path, tiny_init, override, match):
    extra = ["algo.estimator=maxrl_t"] if "T:" in override else []
    with pytest.raises((ValueError, ConfigError), match=match):
        tiny_cfg(tmp_path, tiny_init, *extra, override)


# shipped method configs whose name is not an estimator's: (estimator, settings they add)
METHOD_CONFIGS = {"grpo_entropy": ("grpo", {"entropy_coef": 0.001})}


def test_shipped_configs_resolve_to_the_estimator_they_name():
    files = sorted(CONFIGS.glob("maze_*.yaml"))
    names = {f.stem.removeprefix("maze_") for f in files}
    assert set(advantages.names()) <= names | {"paper", "quick"}, names
    assert set(METHOD_CONFIGS) <= names
    for f in files:
        cfg = load_config(TrainConfig, f)
        name = f.stem.removeprefix("maze_")
        if name in advantages.names():
            assert cfg.algo.estimator == name, f
            advantages.validate_params(name, cfg.rollout.rollouts_per_prompt, **cfg.algo.params)
        if name in METHOD_CONFIGS:
            estimator, settings = METHOD_CONFIGS[name]
            assert cfg.algo.estimator == estimator, f
            assert {k: getattr(cfg.algo, k) for k in settings} == settings, f


def test_cli_smoke_with_sft_warm_start(tmp_path):
    out = tmp_path / "run"
    rc = cli_main(
        [
            "train",
            "model.preset=tiny",
            "sft.steps=6",
            "sft.batch_size=4",
            "sft.eval_every=4",
            "run.steps=2",
            "task.maze_size=7",
            "task.test_count=4",
            "eval.prompts=4",
            "eval.samples=4",
            "eval.every=1",
            "rollout.prompts_per_step=2",
            "rollout.rollouts_per_prompt=4",
            "rollout.max_new_tokens=8",
            f"run.out_dir={out}",
            "run.progress=false",
        ]
    )
    assert rc == 0
    for name in (
        "summary.md",
        "pass_at_k.png",
        "training.png",
        "config.yaml",
        "sft/final/config.json",
    ):
        assert (out / name).exists(), name
    records = read_metrics(out / "metrics.jsonl")
    evals = [r for r in records if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    # SFT on its own cadence: before the first step, every sft.eval_every, after the last
    sft_evals = [r["step"] for r in read_metrics(out / "sft/metrics.jsonl") if "eval/pass@1" in r]
    assert sft_evals == [0, 4, 6]
    for r in evals:
        values = [r[f"eval/pass@{k}"] for k in (1, 2, 4)]
        assert all(0 <= v <= 1 for v in values) and values == sorted(values)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["step"] == 2
    assert (out / "tb").exists()


def test_shared_prefix_forward_equals_full_forward():
    from maxrl.train.logprobs import response_logprobs

    model = build_model("tiny", seed=1).double()
    prompts = [[1, 4, 9, 7], [1, 4, 8, 8, 9, 10, 11], [1, 5]]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 6, (9,), generator=gen)
    responses = torch.randint(4, 20, (9, int(lengths.max())), generator=gen)
    responses[torch.arange(responses.shape[1])[None, :] >= lengths[:, None]] = 0
    a, mask_a, ent_a = response_logprobs(model, prompts, responses, lengths, 3, 0, entropy=True)
    b, mask_b, ent_b = response_logprobs(
        model, prompts, responses, lengths, 3, 0, entropy=True, shared_prefix=False
    )
    assert torch.equal(mask_a, mask_b)
    assert mask_a.sum() == lengths.sum()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ent_a, ent_b, rtol=1e-12, atol=1e-12)
    grads_a = torch.autograd.grad(a.sum(), list(model.parameters()))
    grads_b = torch.autograd.grad(b.sum(), list(model.parameters()))
    for x, y in zip(grads_a, grads_b):
        # RoPE tables are float32 inside the model, hence float32-level agreement
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_ppo_epochs_and_minibatches_run_and_clip(tmp_path, tiny_init):
    cfg = tiny_cfg(
        tmp_path,
        tiny_init,
        "run.steps=2",
        "algo.ppo_epochs=3",
        "algo.minibatches=2",
        "optim.lr=3e-2",
        "algo.kl_coef=0.1",
    )
    rl.train(cfg, task=FirstMoveTask())
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/clip_frac" in r]
    assert len(train) == 2
    assert any(r["train/clip_frac"] > 0 for r in train)
    assert train[-1]["train/kl"] > 0


def test_lora_trains_adapters_only_and_resumes(tmp_path, tiny_init):
    pytest.importorskip("peft")
    lora = ["model.lora_rank=2", "optim.lr=3e-2", "optim.schedule=constant"]  # resumed longer
    cfg = tiny_cfg(tmp_path, tiny_init, "run.steps=2", *lora)
    rl.train(cfg, task=FirstMoveTask())
    ckpt = latest_checkpoint(tmp_path)
    assert (ckpt / "adapter_config.json").exists()
    from safetensors.torch import load_file

    adapters = load_file(ckpt / "adapter_model.safetensors")
    assert adapters and all("lora" in k for k in adapters)
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0
    rl.train(
        tiny_cfg(tmp_path, tiny_init, "run.steps=3", *lora),
        task=FirstMoveTask(),
    )
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3]


def _llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=32,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
        return LlamaForCausalLM(config)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("attention", ["split", "one-call"])
@pytest.mark.parametrize("prompt_lengths", ["uneven", "even"])
def test_packed_forward_equals_full_forward(
    family, temperature, attention, prompt_lengths, monkeypatch
):
    """The packed training forward (each prompt once, responses without padding) gives the
    log-probabilities, entropies and gradients of a plain full forward over every sequence,
    with the response attention split in two flash calls (CPU) or in one SDPA call (elsewhere),
    and prompts of different lengths (padded keys masked) or of one length (no mask)."""
    import maxrl.train.packed as packed_module
    from maxrl.train.logprobs import response_logprobs
    from maxrl.train.packed import packed_logprobs, supports_packed

    assert packed_module._splits_attention(torch.device("cpu"))
    if attention == "one-call":
        monkeypatch.setattr(packed_module, "_splits_attention", lambda device: False)
    model = (build_model("tiny", seed=1) if family == "qwen2" else _llama()).double()
    assert supports_packed(model)
    prompts = [[1, 4, 9, 7], [1, 4, 8, 8, 9, 10, 11], [1, 5]]
    if prompt_lengths == "even":
        prompts = [p + [6] * (7 - len(p)) for p in prompts]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 7, (9,), generator=gen)
    lengths[:2] = torch.tensor([1, 6])  # a one-token response, and the longest
    responses = torch.randint(4, 20, (9, 6), generator=gen)
    responses[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    full, mask_full, ent_full = response_logprobs(
        model, prompts, responses, lengths, 3, 0, temperature, entropy=True, shared_prefix=False
    )
    packed, mask, ent = packed_logprobs(
        model, prompts, responses, lengths, 3, temperature, entropy=True
    )
    assert torch.equal(mask, mask_full) and mask.sum() == lengths.sum()
    # RoPE tables are float32 inside the model, hence float32-level agreement
    torch.testing.assert_close(packed, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent, ent_full, rtol=1e-6, atol=1e-6)
    weights = torch.randn(packed.shape, generator=gen, dtype=torch.float64)
    params = list(model.parameters())
    grads_full = torch.autograd.grad((weights * full).sum(), params)
    grads = torch.autograd.grad((weights * packed).sum(), params)
    for got, want in zip(grads, grads_full):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_packed_forward_is_used_only_where_it_is_exact():
    from transformers import GPT2Config, GPT2LMHeadModel

    from maxrl.train.packed import supports_packed

    model = build_model("tiny", seed=0)
    assert supports_packed(model) and supports_packed(_llama())
    assert not supports_packed(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2)))
    model.gradient_checkpointing_enable()
    assert not supports_packed(model)


def test_recomputes_activations_reads_the_checkpointing_flag():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from maxrl.train.logprobs import enable_activation_checkpointing, recomputes_activations
    from maxrl.train.packed import supports_packed

    cfg = Qwen2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, vocab_size=40,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    assert not recomputes_activations(model) and supports_packed(model)
    enable_activation_checkpointing(model)
    # with checkpointing on, neither the packed forward nor the shared prompt cache is used
    assert recomputes_activations(model) and not supports_packed(model)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.precision=float32", "rollout.precision=model"], "float32"),
        (["model.precision=bfloat16", "rollout.precision=model"], "bfloat16"),
        (["model.precision=bfloat16", "rollout.precision=float32"], "float32"),
        (["model.precision=float32", "rollout.precision=bfloat16"], "bfloat16"),
        (["model.precision=bfloat16", "rollout.precision=model", "rollout.backend=hf"], "float32"),
        # the model's own forward under autocast runs attention in bf16: not the sampler's numerics
        (["model.precision=bfloat16", "model.packed=false"], "float32"),
        (["model.precision=auto", "rollout.precision=model"], "auto"),
        (["model.precision=bfloat16"], "bfloat16"),  # the default: rollout.precision=model
    ],
)
def test_rollouts_sample_in_the_training_forwards_precision(
    tmp_path, tiny_init, overrides, expected
):
    """``rollout.precision=model`` (the default) samples the RL rollouts in the precision the
    training forward runs in; evaluation samples in float32 whatever the setting."""
    from maxrl.train.logprobs import bf16_is_fast
    from maxrl.train.setup import setup

    if expected == "auto":
        expected = "bfloat16" if bf16_is_fast(torch.device("cpu")) else "float32"
    run = setup(tiny_cfg(tmp_path, tiny_init, *overrides))
    assert getattr(run.sampler, "precision", "float32") == expected
    assert getattr(run.eval_sampler, "precision", "float32") == "float32"
    # one sampler (one vLLM engine) where both sample in float32
    assert (run.eval_sampler is run.sampler) == (expected == "float32")


def test_a_folder_from_before_rollout_precision_resumes_with_float32_rollouts(tmp_path, tiny_init):
    """A run folder whose config predates ``rollout.precision`` sampled in float32: resuming it
    with the default goes on in float32; asking for bf16 there is refused as a changed config."""
    from omegaconf import OmegaConf

    from maxrl.config import ConfigError, save_config
    from maxrl.train.setup import check_resume

    save_config(tiny_cfg(tmp_path, tiny_init), tmp_path / "config.yaml")
    saved = OmegaConf.load(tmp_path / "config.yaml")
    del saved.rollout["precision"]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    cfg = tiny_cfg(tmp_path, tiny_init)
    assert cfg.rollout.precision == "model"
    check_resume(cfg, tmp_path, step=2)
    assert cfg.rollout.precision == "float32"
    with pytest.raises(ConfigError, match="rollout.precision: 'float32' -> 'bfloat16'"):
        check_resume(tiny_cfg(tmp_path, tiny_init, "rollout.precision=bfloat16"), tmp_path, 2)


@pytest.mark.parametrize("overrides, expected", [([], 2), (["rollout.workers=1"], 1)])
def test_rollouts_and_evaluation_decode_with_rollout_workers_streams(
    tmp_path, tiny_init, overrides, expected
):
    """``rollout.workers`` (2 by default) decode streams for the RL rollouts and evaluation of a
    CPU model, whatever ``run.threads`` gives the training forward."""
    from maxrl.train.setup import setup

    run = setup(tiny_cfg(tmp_path, tiny_init, "model.precision=bfloat16", *overrides))
    assert run.sampler is not run.eval_sampler
    assert run.sampler.workers == run.eval_sampler.workers == expected
    with pytest.raises(ValueError, match="rollout.workers must be >= 1; got 0"):
        tiny_cfg(tmp_path, tiny_init, "rollout.workers=0")


@pytest.mark.parametrize("section, name", [("rollout", "workers"), ("run", "update_workers")])
def test_a_folder_from_before_the_streams_resumes_with_one_stream(
    tmp_path, tiny_init, section, name
):
    """A run folder whose config predates ``rollout.workers`` (or ``run.update_workers``)
    sampled (or trained) with one stream: resuming it with the default goes on with one (a
    value equal to the default counts as the default); asking for three there is refused."""
    from omegaconf import OmegaConf

    from maxrl.config import ConfigError, save_config
    from maxrl.train.setup import check_resume

    save_config(tiny_cfg(tmp_path, tiny_init), tmp_path / "config.yaml")
    saved = OmegaConf.load(tmp_path / "config.yaml")
    del saved[section][name]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    cfg = tiny_cfg(tmp_path, tiny_init)
    assert getattr(getattr(cfg, section), name) == 2
    check_resume(cfg, tmp_path, step=2)
    assert getattr(getattr(cfg, section), name) == 1
    with pytest.raises(ConfigError, match=f"{section}.{name}: 1 -> 3"):
        check_resume(tiny_cfg(tmp_path, tiny_init, f"{section}.{name}=3"), tmp_path, 2)


def test_keep_freed_memory_reuses_freed_pages():
    """After ``keep_freed_memory``, a step's worth of freed temporaries (here 4 to 48 MB each:
    glibc by default maps those over 32 MB afresh on every request) serve the next step without
    page faults once the heap has grown to hold them: the median round takes none, against
    about 22,000 under glibc's defaults and 12,000 with the trim threshold that once did not fit
    mallopt's int (0: memory returned on every free). It runs in a fresh process, whose main
    thread alone allocates (threads started by earlier tests get arenas of their own)."""
    import subprocess
    import sys

    script = """
import resource, statistics, torch
from maxrl.seeding import keep_freed_memory
if not keep_freed_memory():
    print("skip")
    raise SystemExit
def step():
    temporaries = [torch.empty(n).fill_(1.0) for n in (10 * 2**20, 2**20, 12 * 2**20, 2**21)]
    del temporaries
for _ in range(5):
    step()
faults = []
for _ in range(15):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(statistics.median(faults), faults)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "skip":
        pytest.skip("not glibc")
    median, rounds = out.stdout.split(" ", 1)
    assert float(median) < 100, f"page faults per round of reused temporaries: {rounds.strip()}"


def _grad_rel_diff(a, b) -> float:
    """Largest relative difference between two gradient dicts, tensor by tensor (by norm)."""
    return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in b)


@pytest.mark.parametrize(
    "algo",
    [
        {},
        {"loss_agg": "seq_mean"},
        {"loss_agg": "seq_sum", "entropy_coef": 0.01},
        {"ppo_epochs": 2, "minibatches": 2},
        {"kl_coef": 0.1},
    ],
    ids=["token_mean", "seq_mean", "seq_sum_entropy", "ppo", "kl"],
)
def test_update_streams_sum_to_the_one_stream_gradient_in_a_fixed_order(tiny_init, algo):
    """``run.update_workers``: the micro-batch's groups split over threads give the gradient of
    one stream for even and uneven shards (to float32 rounding: the packed forward's logits are
    float32, so a float64 model agrees to about 1e-7), and the same bits on every call (the
    shards' gradients are summed in shard order, not as threads finish)."""
    from maxrl.groups import make_rollout_sampler, sample_groups
    from maxrl.rollout import SamplingParams
    from maxrl.train.config import AlgoConfig, OptimConfig
    from maxrl.train.streams import update_workers

    model, tok = load_policy(tiny_init)
    assert update_workers(2, model) == 2 and update_workers(3, model) == 3
    task = FirstMoveTask()
    groups = sample_groups(
        model, tok, task, task.train_items(4, seed=3), 8, make_rollout_sampler("kv"),
        SamplingParams(8, stop_token_ids=(tok.eos_token_id,)), torch.Generator().manual_seed(0),
    )  # fmt: skip
    adv = advantages.compute("maxrl", groups.rewards)
    assert adv.abs().sum() > 0
    model = model.double()
    ref = load_policy(tiny_init)[0].double() if algo.get("kl_coef") else None

    def grads(workers):
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        stats = update.optimise(
            model, opt, groups, adv, AlgoConfig(**algo), OptimConfig(grad_clip=0.0),
            micro_batch_size=256, seed=0, step=1, workers=workers, ref_model=ref,
        )  # fmt: skip
        return {n: p.grad.clone() for n, p in model.named_parameters()}, stats

    one, stats_one = grads(1)
    for workers in (2, 3):  # 4 groups: shards of 2 + 2, and of 2 + 1 + 1
        got, stats = grads(workers)
        assert _grad_rel_diff(got, one) < 1e-5
        # (the on-policy loss's value is -mean(A) = 0 up to rounding, nothing to compare)
        assert stats.entropy == pytest.approx(stats_one.entropy, rel=1e-5)
        assert stats.grad_norm == pytest.approx(stats_one.grad_norm, rel=1e-5)
        again, _ = grads(workers)
        assert all(torch.equal(again[n], got[n]) for n in got)


def test_sft_shards_sum_to_the_batch_loss_gradient(tiny_init):
    """The SFT step's loss over shards of its demonstrations (each over the batch's answer
    tokens) backpropagates to the gradient of the batch's mean answer loss (to float32 rounding,
    as above)."""
    from maxrl.train.sft import _answer_loss, sft_batch
    from maxrl.train.streams import backward_in_streams, shards

    model, tok = load_policy(tiny_init)
    model = model.double()
    cfg = tiny_cfg("unused", tiny_init, "model.precision=float32")
    prompts, answers, lengths = sft_batch(
        tok, MazeTask(size=7, test_count=4).train_items(6, seed=1)
    )
    batch = (prompts, answers, lengths, float(lengths.sum()))
    params = list(model.parameters())
    whole, value = _answer_loss(model, cfg, tok, batch, torch.arange(6))
    want = dict(zip(range(len(params)), torch.autograd.grad(whole, params)))
    for workers in (1, 2, 4):
        model.zero_grad(set_to_none=True)
        parts = shards(torch.arange(6), workers)
        assert len(parts) == workers
        closures = [lambda part=part: _answer_loss(model, cfg, tok, batch, part) for part in parts]
        values = backward_in_streams(closures, params)
        assert sum(values) == pytest.approx(value, rel=1e-5)
        got = {i: p.grad for i, p in enumerate(params)}
        assert _grad_rel_diff(got, want) < 1e-5


def test_backward_in_streams_sums_in_closure_order_not_as_threads_finish():
    """Gradients 1, 1e8 and -1e8 (float32) sum to 0 in closure order, (1 + 1e8) - 1e8, but to 1
    in the order these threads finish (1e8 first, the first closure last)."""
    import time
    from functools import partial

    from maxrl.train.streams import backward_in_streams

    weight = torch.zeros(1, requires_grad=True)

    def closure(value, delay):
        time.sleep(delay)
        return (weight * value).sum(), value

    values, delays = [1.0, 1e8, -1e8], [0.3, 0.0, 0.1]
    infos = backward_in_streams([partial(closure, v, d) for v, d in zip(values, delays)], [weight])
    assert infos == values
    assert weight.grad.item() == 0.0
