"""One RL step of ``maxrl train`` against TRL's ``GRPOTrainer``, on the same model and prompts.

Both trainers run in this process with one torch thread, and their steps alternate: a TRL
callback runs one ``maxrl`` step after each TRL step, so both see the same machine state. The
comparison is TRL 1.16's plain ``GRPOTrainer`` with ``num_generations = N``, one generation
batch per optimiser step (``steps_per_generation`` = ``gradient_accumulation_steps``), the same
micro-batch of rollouts, the same maximum response length and temperature, ``beta = 0``, one
iteration, no vLLM; and the native trainer as ``maxrl train`` runs it (``maxrl.train.rl.rl_step``:
the kv sampler, the packed training forward, ``model.precision`` as given).

Both start from the same SFT warm-start of the maze model (``--sft-steps`` of the main job's SFT,
made first), so responses have the length a trained policy gives them. Each step is split into
rollout (sampling, decoding, verification, advantages) and update (forward, backward, optimiser
step). The first ``--warmup`` steps of each are not timed; the figures are medians over the
timed steps, and the last line is ``speedup_vs_trl=<median TRL step / median maxrl step>``.

Settings (``--setting``):

- ``main``: the main job's step, 16 prompts x 16 rollouts of 9x9 mazes, the ``small`` model,
  64 new tokens.
- ``fig3``: a step of the Figure-3 reproduction's size (``configs/sweep_fig3.yaml``: 13x13 mazes,
  the ``small`` model, 64 new tokens) with 16 prompts x 128 rollouts; ``--size`` and
  ``--preset`` change the maze and the model.

Run: ``python benchmarks/rl_step.py --setting main`` (a few minutes) and ``--setting fig3``.
``--precision`` sets the native trainer's ``model.precision`` (default ``auto``, as ``maxrl train``:
bf16 matmuls on an AMX CPU or a GPU, float32 elsewhere), ``--rollout-precision`` its
``rollout.precision`` (default: ``maxrl train``'s), ``--rollout-workers`` its ``rollout.workers``
and ``--update-workers`` its ``run.update_workers`` (default 1 each, so that both trainers run
one torch thread; ``maxrl train`` decodes and updates with 2 streams by default). Both trainers run with glibc told to
keep freed memory (``maxrl.seeding.keep_freed_memory``, which ``maxrl train`` does by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = {
    "main": dict(size=9, preset="small", prompts=16, rollouts=16, new_tokens=64, micro=256),
    "fig3": dict(size=13, preset="small", prompts=16, rollouts=128, new_tokens=64, micro=256),
}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="main")
    parser.add_argument("--size", type=int, help="maze side (default: the setting's)")
    parser.add_argument("--preset", help="model preset (default: the setting's)")
    parser.add_argument("--init", default="", help="start from this model folder (skips SFT)")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT warm-start steps")
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument(
        "--rollout-precision",
        default="",
        choices=["", "model", "float32", "bfloat16"],
        help="the native trainer's rollout.precision (default: maxrl train's)",
    )
    parser.add_argument(
        "--rollout-workers",
        type=int,
        default=1,
        help="the native trainer's rollout.workers (default 1: one thread each, as TRL runs; "
        "maxrl train's default is 2 decode streams)",
    )
    parser.add_argument(
        "--update-workers",
        type=int,
        default=1,
        help="the native trainer's run.update_workers (default 1: one thread each, as TRL runs; "
        "maxrl train's default is 2 streams)",
    )
    parser.add_argument("--skip-trl", action="store_true", help="time the native trainer only")
    return parser.parse_args(argv)


def native_config(args, s, init: str, out: str):
    from maxrl.config import load_config
    from maxrl.train.config import TrainConfig

    return load_config(
        TrainConfig,
        None,
        [
            f"model.init={init}",
            f"model.precision={args.precision}",
            *([f"rollout.precision={args.rollout_precision}"] if args.rollout_precision else []),
            f"rollout.workers={args.rollout_workers}",
            f"run.update_workers={args.update_workers}",
            f"task.maze_size={s['size']}",
            "task.test_count=4",
            f"rollout.prompts_per_step={s['prompts']}",
            f"rollout.rollouts_per_prompt={s['rollouts']}",
            f"rollout.max_new_tokens={s['new_tokens']}",
            f"run.micro_batch_size={s['micro']}",
            f"run.steps={args.warmup + args.steps}",
            f"run.out_dir={out}",
            "run.tensorboard=false",
            "run.progress=false",
            "eval.prompts=4",
            "eval.samples=2",
        ],
    )


def warm_start(args, s, workdir: Path) -> str:
    """The SFT model both trainers start from (``--init``, or a short SFT of the preset)."""
    if args.init:
        return args.init
    from maxrl.config import load_config
    from maxrl.train.config import TrainConfig
    from maxrl.train.sft import run_sft

    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.preset={s['preset']}",
            f"task.maze_size={s['size']}",
            "task.test_count=16",
            f"sft.steps={args.sft_steps}",
            "eval.every=100000",
            "sft.eval_every=100000",
            "eval.prompts=16",
            "eval.samples=4",
            f"rollout.max_new_tokens={s['new_tokens']}",
            "run.tensorboard=false",
            "run.progress=false",
            f"run.checkpoint_every={args.sft_steps}",
        ],
    )
    return str(run_sft(cfg, workdir / "sft"))


class NativeSteps:
    """The native trainer's steps, one at a time, timed as ``maxrl train`` times them."""

    def __init__(self, cfg):
        from maxrl.train.setup import setup

        self.run = setup(cfg)
        self.step = 0
        self.times: list[tuple[float, float]] = []

    def __call__(self) -> None:
        from maxrl.train.rl import rl_step

        self.step += 1
        record = rl_step(self.run, self.step)
        self.times.append((record["time/rollout_s"], record["time/train_s"]))


def trl_trainer(args, s, init: str, out: str, after_step):
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from maxrl.integrations.trl import task_reward
    from maxrl.models.loading import load_policy
    from maxrl.tasks.maze import MazeTask

    model, tokenizer = load_policy(init)
    task = MazeTask(size=s["size"], test_count=4)
    steps = args.warmup + args.steps
    items = task.train_items(s["prompts"] * steps, seed=12345)
    dataset = datasets.Dataset.from_dict(
        {"prompt": [item.prompt for item in items], "item_id": [item.id for item in items]}
    )
    generation = s["prompts"] * s["rollouts"]
    accumulation = max(1, generation // s["micro"])
    config = GRPOConfig(
        output_dir=out,
        num_generations=s["rollouts"],
        per_device_train_batch_size=min(s["micro"], generation),
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        max_completion_length=s["new_tokens"],
        temperature=1.0,
        learning_rate=1e-4,  # as maxrl train (its cosine decay does not change a step's time)
        lr_scheduler_type="cosine",
        beta=0.0,
        num_iterations=1,
        max_steps=steps,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )

    class Timing(TrainerCallback):
        def __init__(self):
            self.times: list[tuple[float, float]] = []
            self.rollout = 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - self.start
            self.times.append((self.rollout, total - self.rollout))
            self.rollout = 0.0
            after_step()

    timing = Timing()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=task_reward(task, items, eos_token_ids=tokenizer.eos_token_id),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timing],
    )
    generate = trainer._generate_and_score_completions

    def timed_generate(inputs):
        t = time.perf_counter()
        out = generate(inputs)
        timing.rollout += time.perf_counter() - t
        return out

    trainer._generate_and_score_completions = timed_generate
    return trainer, timing


def report(name: str, times: list[tuple[float, float]], skip: int) -> float:
    timed = times[skip:]
    rollout = statistics.median(t[0] for t in timed)
    update = statistics.median(t[1] for t in timed)
    step = statistics.median(t[0] + t[1] for t in timed)
    print(
        f"{name}: {step:.3f} s per step (rollout {rollout:.3f} s, update {update:.3f} s; "
        f"median of {len(timed)} steps: {', '.join(f'{a + b:.2f}' for a, b in timed)})"
    )
    return step


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    from maxrl.seeding import keep_freed_memory

    tuned = keep_freed_memory()  # for the whole process: both trainers run under it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    s = dict(SETTINGS[args.setting])
    s.update({k: v for k, v in (("size", args.size), ("preset", args.preset)) if v})
    from maxrl.models.loading import quiet_transformers

    quiet_transformers()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(
        f"setting {args.setting}: {s['prompts']} prompts x {s['rollouts']} rollouts, "
        f"{s['size']}x{s['size']} mazes, preset {s['preset']}, {s['new_tokens']} new tokens, "
        f"micro-batch {s['micro']}; precision {args.precision}; one torch thread; freed memory "
        f"{'kept' if tuned else 'returned'}; CPU "
        f"{'with' if amx else 'without'} AMX ({torch.backends.cpu.get_cpu_capability()})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        init = warm_start(args, s, workdir)
        native = NativeSteps(native_config(args, s, init, str(workdir / "native")))
        print(f"native rollouts sampled in {getattr(native.run.sampler, 'precision', 'float32')}")
        if args.skip_trl:
            for _ in range(args.warmup + args.steps):
                native()
            report("maxrl", native.times, args.warmup)
            return
        trainer, timing = trl_trainer(args, s, init, str(workdir / "trl"), native)
        trainer.train()
        ours = report("maxrl", native.times, args.warmup)
        theirs = report("trl GRPOTrainer", timing.times, args.warmup)
    print(f"speedup_vs_trl={theirs / ours:.2f}")


if __name__ == "__main__":
    sys.exit(main())
