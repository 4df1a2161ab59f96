"""What SFT and RL share: seeding, models, prompt batches, safe verification, metrics, and
checkpoints that a crash cannot corrupt.

Every random choice of step ``s`` (its prompts, its rollouts) is drawn from generators seeded by
``(run seed, s)``, so the state a run must carry across a restart is only the model, the
optimiser, the scheduler and the step: resuming from a checkpoint replays exactly the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from maxrl.tasks.base import Item, Task

log = logging.getLogger("maxrl")


def step_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of one step, independent across streams."""
    digest = hashlib.blake2b(f"{seed}/{step}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, step: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def quiet_transformers() -> None:
    """Checkpoints are written every few steps: transformers' own progress bars would drown the
    run's single one."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Models


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_policy(path: str, dtype: str = "float32"):
    """A causal LM and its tokenizer from a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    if not Path(path).exists():
        raise FileNotFoundError(
            f"model.init={path!r} does not exist; give a folder written by save_pretrained "
            f"(e.g. an SFT run's final/ folder), or leave it empty to warm-start with SFT"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(path: str):
    """The tokenizer saved in ``path``.

    A plain ``tokenizers`` tokenizer saved next to a model config (the maze models) must be
    loaded as such: ``AutoTokenizer`` would follow the model type and rebuild a byte-level BPE
    tokenizer over its vocabulary, which silently mis-encodes every prompt.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    if config.exists():
        cls = json.loads(config.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build_policy(preset: str, seed: int, dtype: str = "float32"):
    """A maze model built from a preset, with the maze tokenizer."""
    from maxrl.models import build_model, maze_tokenizer

    tokenizer = maze_tokenizer()
    model = build_model(preset, vocab_size=len(tokenizer), seed=seed).to(DTYPES[dtype])
    return model, tokenizer


def stop_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(tokenizer, "additional_stop_ids", None) or ()
    ids.update(extra)
    return tuple(sorted(i for i in ids if i is not None))


def encode_prompts(tokenizer, items: Sequence[Item]) -> list[list[int]]:
    """Prompt token ids: ``Item.prompt`` is complete text, so no special tokens are added."""
    return [tokenizer(item.prompt, add_special_tokens=False)["input_ids"] for item in items]


def concat_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Right-padded prompt+response batch with a mask of the response tokens.

    Returns (input_ids, attention_mask, response_mask), each (B, L).
    """
    seqs = [torch.tensor(p + r, dtype=torch.long) for p, r in zip(prompts, responses)]
    input_ids = pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    positions = torch.arange(input_ids.shape[1])
    attention_mask = (positions[None, :] < lengths[:, None]).long()
    starts = torch.tensor([len(p) for p in prompts])
    response_mask = (positions[None, :] >= starts[:, None]) & attention_mask.bool()
    return input_ids, attention_mask, response_mask


# ---------------------------------------------------------------------------------------------
# Verification


def safe_verify(task: Task, items: Sequence[Item], completions: Sequence[str], **kwargs):
    """Rewards for a batch; a verifier that raises scores that rollout 0 and is counted.

    Returns (rewards as a float list, number of rollouts whose verification raised).
    """
    try:
        rewards = task.verify(items, completions, **kwargs)
        return [_as_reward(r) for r in rewards], 0
    except Exception:
        pass
    rewards, errors = [], 0
    for item, completion in zip(items, completions):
        try:
            rewards.append(_as_reward(task.verify([item], [completion], **kwargs)[0]))
        except Exception as exc:  # one bad rollout must not stop the run
            errors += 1
            rewards.append(0.0)
            if errors == 1:
                warnings.warn(
                    f"verifier raised on item {item.id!r}: {exc!r}; that rollout scores 0",
                    stacklevel=2,
                )
    return rewards, errors


def _as_reward(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


# ---------------------------------------------------------------------------------------------
# Metrics


class MetricsLogger:
    """Metrics to ``metrics.jsonl`` (always), TensorBoard and Weights & Biases (when asked).

    Keys under ``time/`` hold wall-clock figures; everything else is a deterministic function of
    the seed, which the resume test relies on.
    """

    def __init__(
        self,
        out_dir: Path,
        tensorboard: bool = True,
        wandb_project: str = "",
        config: dict | None = None,
        resume_step: int = -1,
    ):
        self.path = out_dir / "metrics.jsonl"
        if resume_step >= 0 and self.path.exists():
            # a crashed run may have logged past its last checkpoint: those steps are replayed
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", -1) <= resume_step
            ]
            _atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tb"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError(
                    "run.wandb_project is set but wandb is missing: pip install wandb"
                ) from exc
            self._wandb = wandb.init(project=wandb_project, dir=str(out_dir), config=config)

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return v


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp) as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    out_dir: Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step}`` atomically, then point ``checkpoints/latest`` at it.

    The folder is written under a temporary name and renamed when complete, and ``latest`` is
    replaced only after that: a crash at any moment leaves the previous checkpoint intact and
    ``latest`` naming a complete one.
    """
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "trainer_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_trainer_state(path: Path, optimizer, scheduler) -> dict:
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((path / "state.json").read_text())


def lr_lambda(schedule: str, warmup: int, total: int, floor: float = 0.0):
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return floor + (1 - floor) * (1 - frac)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

    return fn


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def response_logprobs(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    n: int,
    pad_id: int,
    temperature: float = 1.0,
    entropy: bool = False,
    shared_prefix: bool = True,
):
    """Per-token log-probabilities of ``responses`` (group-major: ``n`` per prompt), (B, Lr).

    With ``shared_prefix`` each prompt runs once and its KV cache is repeated for its ``n``
    rollouts; gradients flow through the shared cache, so the result and its gradient equal a
    full forward over every (prompt + response), at a fraction of the cost when prompts are long
    next to responses (a 9x9 maze: 94 prompt tokens, about 15 response tokens). Without it (e.g.
    under gradient checkpointing, which disables the cache) each sequence runs whole.

    Returns (logp, mask, entropies or None), each (B, Lr), in response coordinates: column j is
    response token j, the same layout as ``Rollouts.logprobs``.
    """
    n_seq = len(responses)
    if n_seq != len(prompts) * n:
        raise ValueError(f"{n_seq} responses for {len(prompts)} prompts x {n} rollouts")
    resp = pad_sequence(
        [torch.tensor(r, dtype=torch.long) for r in responses],
        batch_first=True,
        padding_value=pad_id,
    )
    r_len = torch.tensor([len(r) for r in responses])
    r_mask = torch.arange(resp.shape[1])[None, :] < r_len[:, None]
    if shared_prefix:
        logits = _shared_prefix_logits(model, prompts, resp, r_mask, n, pad_id)
    else:
        full_prompts = [p for p in prompts for _ in range(n)]
        ids, attn, _ = concat_batch(full_prompts, responses, pad_id)
        all_logits = model(input_ids=ids, attention_mask=attn).logits
        starts = torch.tensor([len(p) - 1 for p in full_prompts])
        cols = (starts[:, None] + torch.arange(resp.shape[1])[None, :]).clamp_max(ids.shape[1] - 1)
        logits = all_logits.gather(1, cols[..., None].expand(-1, -1, all_logits.shape[-1]))
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, resp[..., None]).squeeze(-1) * r_mask
    ent = -(logp_all.exp() * logp_all).sum(-1) * r_mask if entropy else None
    return logp, r_mask, ent


def _shared_prefix_logits(model, prompts, resp, r_mask, n: int, pad_id: int):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    p_mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left-pad, so every prompt's last token is the last column
        ids[i, width - len(p) :] = torch.tensor(p)
        p_mask[i, width - len(p) :] = 1
    positions = (p_mask.cumsum(1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=p_mask, position_ids=positions, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    first = out.logits[:, -1:].repeat_interleave(n, 0)  # predicts response token 0
    p_len = p_mask.sum(1).repeat_interleave(n)
    mask = torch.cat([p_mask.repeat_interleave(n, 0), r_mask.long()], 1)
    pos = p_len[:, None] + torch.arange(resp.shape[1])[None, :]
    rest = model(
        input_ids=resp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
    ).logits
    return torch.cat([first, rest[:, :-1]], 1)
