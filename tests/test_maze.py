import hashlib
import itertools
import json
import random

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

from maxrl.cli import main as cli_main
from maxrl.config import ConfigError
from maxrl.tasks import TaskConfig, make_task
from maxrl.tasks.base import Item, Task
from maxrl.tasks.maze import (
    GOAL,
    PATH,
    START,
    WALL,
    MazeTask,
    format_answer,
    format_prompt,
    format_sequence,
    generate_maze,
    grid_id,
    main,
    mark_endpoints,
    maze_stream,
    official_dataset,
    parse_prompt,
    solve,
    verify,
)

SEEDS_PER_SIZE = {5: 50, 7: 100, 9: 200, 17: 60}


def _open_edges(grid):
    """Pairs of 4-adjacent open cells, as flat indices."""
    open_ = grid != WALL
    flat = np.arange(grid.size).reshape(grid.shape)
    right = open_[:, :-1] & open_[:, 1:]
    down = open_[:-1, :] & open_[1:, :]
    src = np.concatenate([flat[:, :-1][right], flat[:-1, :][down]])
    dst = np.concatenate([flat[:, 1:][right], flat[1:, :][down]])
    return src, dst


def _distance(grid, a, b):
    """Shortest open-cell distance from a to b, computed by scipy (independent of solve)."""
    src, dst = _open_edges(grid)
    adj = coo_matrix((np.ones(len(src)), (src, dst)), shape=(grid.size, grid.size))
    ncols = grid.shape[1]
    dist = shortest_path(adj, directed=False, unweighted=True, indices=a[0] * ncols + a[1])
    return dist[b[0] * ncols + b[1]]


@pytest.mark.parametrize("size", sorted(SEEDS_PER_SIZE))
def test_generated_mazes_are_perfect_and_bfs_is_shortest(size):
    cells = ((size - 1) // 2) ** 2
    for seed in range(SEEDS_PER_SIZE[size]):
        grid = generate_maze(size, seed)
        assert grid.dtype == np.int8 and grid.shape == (size, size)
        assert set(np.unique(grid).tolist()) == {PATH, WALL}
        # Cells at odd coordinates are open, squares at even-even coordinates and the border walls.
        assert (grid[1::2, 1::2] == PATH).all()
        assert (grid[::2, ::2] == WALL).all()
        assert (grid[0] == WALL).all() and (grid[-1] == WALL).all()
        assert (grid[:, 0] == WALL).all() and (grid[:, -1] == WALL).all()
        # A spanning tree of the cell lattice: cells + (cells - 1) passages, one component,
        # and as many adjacency edges as open squares minus one (no cycle).
        n_open = int((grid == PATH).sum())
        assert n_open == 2 * cells - 1
        _, components = ndimage.label(grid == PATH)
        assert components == 1
        assert len(_open_edges(grid)[0]) == n_open - 1

        moves = solve(grid)
        answer = format_answer(moves)
        assert verify(format_prompt(grid), answer) == 1.0
        assert len(moves) == _distance(grid, (1, 1), (size - 2, size - 2))


def test_same_seed_same_maze_and_seeds_differ():
    np.random.seed(123)  # the global numpy and random states must play no part
    random.seed(123)
    a = generate_maze(9, 42)
    np.random.seed(7)
    random.seed(7)
    assert np.array_equal(a, generate_maze(9, 42))
    # 9x9 mazes repeat now and then (97 distinct in these 100 seeds): the paper's generator
    # favours some mazes; 17x17 ones practically never do.
    assert len({generate_maze(9, s).tobytes() for s in range(100)}) == 97
    assert len({generate_maze(17, s).tobytes() for s in range(100)}) == 100
    # generate_maze is the first maze of its seed's stream; the stream goes on with new mazes.
    stream = list(itertools.islice(maze_stream(17, 42), 50))
    assert np.array_equal(stream[0], generate_maze(17, 42))
    assert len({grid.tobytes() for grid in stream}) == 50
    assert all(np.array_equal(x, y) for x, y in zip(stream, maze_stream(17, 42)))
    with pytest.raises(ValueError, match="odd integer >= 5.*got 8"):
        maze_stream(8, 0)  # refused at once, not at the first draw


def test_maze_pinned_by_value():
    # A change here changes every dataset written so far; update only on purpose.
    assert generate_maze(5, 0).tolist() == [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 1, 1, 1, 1],
    ]
    assert generate_maze(9, 1).tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 0, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]


def _dead_ends(grids: np.ndarray) -> np.ndarray:
    """Per maze: open cells (start and goal included) with exactly one open 4-neighbour."""
    is_open = grids != WALL
    padded = np.pad(is_open, ((0, 0), (1, 1), (1, 1)))
    neighbours = (
        padded[:, :-2, 1:-1].astype(np.int8)
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
    )
    return (is_open & (neighbours == 1)).sum(axis=(1, 2))


def test_dead_ends_match_the_papers_generator():
    # The paper's generator (a random frontier cell per step) averages 22.05 dead ends per 17x17
    # maze; picking a random frontier edge instead gives about 20.7, far outside the bound.
    grids = np.stack(list(itertools.islice(maze_stream(17, 0), 2000)))
    assert abs(_dead_ends(grids).mean() - 22.05) <= 0.25
    ring = _ring((1, 1), (3, 3))  # 8 open cells in a loop: no dead end until the loop is cut
    cut = ring.copy()
    cut[1, 2] = WALL
    assert _dead_ends(np.stack([ring, cut])).tolist() == [0, 2]


PINNED_TEST_SEQUENCE = (
    "<bos> GRID_START WALL WALL WALL WALL WALL WALL WALL WALL WALL NEWLINE WALL START PATH PATH "
    "PATH PATH PATH PATH WALL NEWLINE WALL PATH WALL WALL WALL PATH WALL PATH WALL NEWLINE WALL "
    "PATH PATH PATH WALL PATH WALL PATH WALL NEWLINE WALL PATH WALL WALL WALL WALL WALL PATH WALL "
    "NEWLINE WALL PATH PATH PATH WALL PATH PATH PATH WALL NEWLINE WALL WALL WALL PATH WALL WALL "
    "WALL PATH WALL NEWLINE WALL PATH PATH PATH PATH PATH WALL GOAL WALL NEWLINE WALL WALL WALL "
    "WALL WALL WALL WALL WALL WALL NEWLINE GRID_END PATH_START RIGHT RIGHT RIGHT RIGHT RIGHT RIGHT "
    "DOWN DOWN DOWN DOWN DOWN DOWN DONE <eos>"
)


@pytest.fixture(scope="module")
def official_9x9(tmp_path_factory):
    """``maxrl maze-data size=9 count=300 seed=1 format=official test_size=50 out=DIR``."""
    out = tmp_path_factory.mktemp("official_9x9")
    args = ["size=9", "count=300", "seed=1", "format=official", "test_size=50", f"out={out}"]
    assert cli_main(["maze-data", *args]) == 0
    return out


def test_official_files_pinned_example(official_9x9):
    train = json.loads((official_9x9 / "train.json").read_text())
    test = json.loads((official_9x9 / "test.json").read_text())
    assert len(train) == 250 and len(test) == 50
    assert test[0] == {"sequence": PINNED_TEST_SEQUENCE, "optimal_path_length": 12}
    assert json.loads((official_9x9 / "training_metadata.json").read_text()) == {
        "size": 9,
        "seed": 1,
        "algorithm": "prim",
        "num_train": 250,
        "num_test": 50,
        "test_size": 50,
    }
    # The files are the function's records, written as the paper's script writes them.
    records_train, records_test = official_dataset(9, 300, seed=1, test_size=50)
    assert (records_train, records_test) == (train, test)
    assert (official_9x9 / "test.json").read_text() == json.dumps(test, indent=2)
    for record in train + test:
        grid = parse_prompt(record["sequence"].split(" PATH_START")[0] + " PATH_START")
        assert record["sequence"] == format_sequence(grid)
        assert record["optimal_path_length"] == len(solve(grid))


def test_official_files_pinned_by_digest(tmp_path):
    # SHA-256 of the paper's dataset script's output for these arguments; a change in the
    # generator, the shuffle, the text or the JSON layout shows here.
    args = ["size=17", "count=600", "seed=0", "format=official", "test_size=100", f"out={tmp_path}"]
    assert main(args) == 0
    digests = {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("train.json", "test.json")
    }
    assert digests == {
        "train.json": "3e92d93a23b5265405332d2560ef5a9f02c76a2d1a0180a1972dc223b816c6c2",
        "test.json": "808566ad2008ff8f692d32ff56633ec95d653863b71a2d0ddafb27fac8a3857b",
    }


@pytest.mark.parametrize("size", [3, 4, 8, 10, 0, -5, 9.0])
def test_bad_size_is_rejected(size):
    with pytest.raises(ValueError, match=f"odd integer >= 5.*got {size!r}"):
        generate_maze(size, 0)


# Two equally short routes around the centre wall in every case below.
def _ring(start, goal):
    grid = np.full((5, 5), WALL, dtype=np.int8)
    grid[1:4, 1:4] = PATH
    grid[2, 2] = WALL
    grid[start], grid[goal] = START, GOAL
    return grid


@pytest.mark.parametrize(
    "start, goal, moves",
    [
        ((1, 1), (3, 3), ["DOWN", "DOWN", "RIGHT", "RIGHT"]),  # DOWN before RIGHT
        ((1, 3), (3, 1), ["DOWN", "DOWN", "LEFT", "LEFT"]),  # DOWN before LEFT
        ((3, 1), (1, 3), ["UP", "UP", "RIGHT", "RIGHT"]),  # UP before RIGHT
        ((3, 3), (1, 1), ["UP", "UP", "LEFT", "LEFT"]),  # UP before LEFT
        ((2, 1), (2, 3), ["UP", "RIGHT", "RIGHT", "DOWN"]),  # UP before DOWN
    ],
)
def test_bfs_tie_break_order(start, goal, moves):
    assert solve(_ring(start, goal)) == moves


def test_solve_unreachable_goal():
    grid = _ring((1, 1), (3, 3))
    grid[1, 2] = grid[2, 1] = WALL
    with pytest.raises(ValueError, match=r"goal \(3, 3\) cannot be reached"):
        solve(grid)


def test_prompt_and_answer_text_pinned():
    grid = _ring((1, 1), (3, 3))
    grid[3, 1] = WALL
    prompt = format_prompt(grid)
    assert prompt == (
        "<bos> GRID_START "
        "WALL WALL WALL WALL WALL NEWLINE "
        "WALL START PATH PATH WALL NEWLINE "
        "WALL PATH WALL PATH WALL NEWLINE "
        "WALL WALL PATH GOAL WALL NEWLINE "
        "WALL WALL WALL WALL WALL NEWLINE "
        "GRID_END PATH_START"
    )
    assert parse_prompt(prompt).tolist() == grid.tolist()
    assert format_prompt(parse_prompt(prompt)) == prompt
    assert format_answer(solve(grid)) == "RIGHT RIGHT DOWN DOWN DONE"
    with pytest.raises(ValueError, match="got 'NORTH'"):
        format_answer(["UP", "NORTH"])


def test_unmarked_grid_uses_fixed_corners():
    grid = generate_maze(17, 3)
    marked = mark_endpoints(grid)
    assert marked[1, 1] == START and marked[15, 15] == GOAL
    assert np.array_equal(parse_prompt(format_prompt(grid)), marked)
    assert solve(grid) == solve(marked)
    assert len(format_prompt(grid).split()) == 2 + 17 * 18 + 2


# The verifier grid: start (1, 1), goal (3, 3); two shortest routes; a wall in the middle.
RING_PROMPT = format_prompt(_ring((1, 1), (3, 3)))
# An open-bordered grid where a move can leave the grid without meeting a wall first.
OPEN_PROMPT = "<bos> GRID_START START PATH PATH NEWLINE PATH WALL GOAL NEWLINE GRID_END PATH_START"


@pytest.mark.parametrize(
    "prompt, completion, reward",
    [
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT DONE", 1.0),
        (RING_PROMPT, "RIGHT RIGHT DOWN DOWN DONE <eos>", 1.0),  # any route counts, not only BFS's
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT", 0.0),  # no DONE
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT <eos>", 0.0),
        (RING_PROMPT, "DOWN DOWN foo RIGHT RIGHT DONE", 0.0),  # a non-move before DONE
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT GOAL DONE", 0.0),  # ... even after the goal
        (RING_PROMPT, "down down right right DONE", 0.0),  # moves are case-sensitive
        (RING_PROMPT, "RIGHT DOWN DOWN RIGHT DONE", 0.0),  # into the centre wall
        (RING_PROMPT, "UP DONE", 0.0),  # into the border wall
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT UP UP LEFT LEFT DONE", 1.0),  # goal reached early
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT RIGHT RIGHT DONE", 1.0),  # later wall is ignored
        (RING_PROMPT, "DOWN DOWN RIGHT DONE", 0.0),  # ends off the goal
        (RING_PROMPT, "DONE", 0.0),  # an empty walk ends on the start
        (RING_PROMPT, "DONE DOWN DOWN RIGHT RIGHT DONE", 0.0),  # cut at the first DONE
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT DONE tail UP <eos> <pad> <pad>", 1.0),
        (RING_PROMPT, "DOWN DOWN RIGHT RIGHT DONE <eos> <pad>", 1.0),
        (RING_PROMPT, "\nDOWN\tDOWN  RIGHT RIGHT\nDONE", 1.0),  # any whitespace separates
        (RING_PROMPT, "", 0.0),
        (RING_PROMPT, "   \n ", 0.0),
        (RING_PROMPT, "<unk> ☃ GRID_START {}[] \x00 DONE", 0.0),
        (RING_PROMPT, "<eos>", 0.0),
        (OPEN_PROMPT, "RIGHT RIGHT DOWN DONE", 1.0),
        (OPEN_PROMPT, "UP DONE", 0.0),  # off the top edge
        (OPEN_PROMPT, "LEFT DONE", 0.0),  # off the left edge
        (OPEN_PROMPT, "RIGHT RIGHT RIGHT DOWN DONE", 0.0),  # off the right edge
        (OPEN_PROMPT, "DOWN RIGHT DONE", 0.0),  # into the wall
    ],
)
def test_verify_rules(prompt, completion, reward):
    assert verify(prompt, completion) == reward
    assert verify(prompt.removeprefix("<bos> "), completion) == reward
    item = Item(id="x", prompt=prompt)  # no reference: the task falls back to the prompt
    assert MazeTask().verify([item], [completion]) == [reward]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "must begin with"),
        ("<bos> WALL START GOAL NEWLINE GRID_END", "must begin with"),
        ("<bos> <bos> GRID_START START GOAL NEWLINE GRID_END", "must begin with"),
        ("<bos> GRID_START START GOAL NEWLINE", "no GRID_END"),
        ("GRID_START START GOAL NEWLINE GRID_END PATH_START UP", "only PATH_START may follow"),
        ("GRID_START START GOAL GRID_END", "must end with NEWLINE"),
        ("GRID_START GRID_END", "must end with NEWLINE"),
        (
            "GRID_START START PATH NEWLINE GOAL NEWLINE GRID_END",
            r"equally long; got widths \[1, 2\]",
        ),
        ("GRID_START START GOAL NEWLINE NEWLINE GRID_END", r"non-empty.*widths \[0, 2\]"),
        ("GRID_START START LAVA GOAL NEWLINE GRID_END", "unknown grid cell token 'LAVA'"),
        ("GRID_START START UP GOAL NEWLINE GRID_END", "unknown grid cell token 'UP'"),
        ("GRID_START START PATH NEWLINE PATH PATH NEWLINE GRID_END", "got 1 and 0"),
        ("GRID_START START START NEWLINE GOAL PATH NEWLINE GRID_END", "got 2 and 1"),
        ("GRID_START START GOAL NEWLINE GOAL PATH NEWLINE GRID_END", "got 1 and 2"),
    ],
)
def test_bad_prompt_raises(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)
    with pytest.raises(ValueError, match=message):
        verify(prompt, "DONE")


def test_task_items_are_consistent():
    task = MazeTask(size=9)
    assert isinstance(task, Task) and task.name == "maze"
    items = task.test_items(20) + task.train_items(20, seed=5)
    for item in items:
        grid = np.array(item.reference, dtype=np.int8)
        assert np.array_equal(grid, parse_prompt(item.prompt))
        assert np.array_equal(grid, mark_endpoints(generate_maze(9, item.meta["seed"])))
        assert item.id == grid_id(grid)
        assert item.target == format_answer(solve(grid))
        assert not item.target.endswith("<eos>")
    completions = [it.target for it in items] + ["DONE"] * len(items)
    assert task.verify(items + items, completions) == [1.0] * len(items) + [0.0] * len(items)
    with pytest.raises(ValueError, match="got 2 items but 1 completions"):
        task.verify(items[:2], ["DONE"])


def test_test_set_is_fixed_and_train_is_seeded():
    task = MazeTask(size=9)
    test = task.test_items(256)
    assert len({it.id for it in test}) == 256
    assert task.test_items(10) == test[:10]
    assert MazeTask(size=9, test_count=300).test_items(256) == test
    assert [it.meta["seed"] for it in test[:3]] == [0, 1, 2]
    assert MazeTask(size=9, seed_offset=1000).test_items(1)[0].meta["seed"] == 1000
    assert task.train_items(50, seed=1) == MazeTask(size=9).train_items(50, seed=1)
    assert task.train_items(50, seed=1) != task.train_items(50, seed=2)
    assert all(it.meta["seed"] >= 2**40 for it in task.train_items(50, seed=1))
    with pytest.raises(ValueError, match="count must be in \\[0, test_count=256\\]; got 257"):
        task.test_items(257)


@pytest.mark.parametrize("size, test_count, train_count", [(9, 256, 5000), (7, 64, 2000)])
def test_train_never_holds_a_test_maze(size, test_count, train_count):
    task = MazeTask(size=size, test_count=test_count)
    test_ids = {it.id for it in task.test_items(test_count)}
    train = task.train_items(train_count, seed=0)
    assert len(train) == train_count
    assert test_ids.isdisjoint(it.id for it in train)
    if size == 7:
        # At size 7 many raw seeds do give test mazes, so the filter (not luck) is what holds.
        raw = {grid_id(generate_maze(7, s)) for s in range(2**40, 2**40 + 500)}
        assert raw & test_ids


def test_sizes_with_too_few_mazes_are_refused():
    # Size 5 has exactly 4 mazes (the 2x2 cell lattice has 4 spanning trees).
    with pytest.raises(ValueError, match="size 5 gave only 4 distinct mazes"):
        MazeTask(size=5).test_items(1)
    with pytest.raises(ValueError, match="too few distinct mazes for test_count=4"):
        MazeTask(size=5, test_count=4).train_items(1, seed=0)
    task = MazeTask(size=5, test_count=3)
    (left_over,) = {it.id for it in task.train_items(30, seed=0)}
    assert left_over not in {it.id for it in task.test_items(3)}


def test_maze_data_cli(tmp_path, capsys):
    train_path, test_path = tmp_path / "train.jsonl", tmp_path / "sub" / "test.jsonl"
    common = ["size=7", "test_count=64"]  # size 7 has under 256 distinct mazes
    assert cli_main(["maze-data", *common, "count=30", "split=train", f"out={train_path}"]) == 0
    assert main([*common, "count=20", "split=test", f"out={test_path}"]) == 0
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    test = [json.loads(line) for line in test_path.read_text().splitlines()]
    assert len(train) == 30 and len(test) == 20
    assert set(train[0]) == {"id", "prompt", "answer", "size", "seed"}
    assert [row["id"] for row in test] == [it.id for it in MazeTask(7, 64).test_items(20)]
    assert {row["id"] for row in train}.isdisjoint(row["id"] for row in test)
    for row in train + test:
        assert row["size"] == 7
        assert row["prompt"] == format_prompt(generate_maze(7, row["seed"]))
        assert verify(row["prompt"], row["answer"]) == 1.0

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("size", "count", "format", "split", "seed", "out", "test_count", "test_size"):
        assert f"  {name} = " in out
    assert "format=official writes out/train.json" in out
    with pytest.raises(ConfigError, match="out"):
        main(["size=7"])
    with pytest.raises(ValueError, match="split must be 'train' or 'test'; got 'dev'"):
        main(["split=dev", f"out={tmp_path / 'x.jsonl'}"])
    with pytest.raises(ValueError, match="odd integer >= 5"):
        main(["size=8", f"out={tmp_path / 'x.jsonl'}"])
    with pytest.raises(ValueError, match="count=300 exceeds test_count=256"):
        main(["split=test", "count=300", f"out={tmp_path / 'x.jsonl'}"])
    with pytest.raises(ValueError, match="format must be one of .*got 'parquet'"):
        main(["format=parquet", f"out={tmp_path}"])
    with pytest.raises(ValueError, match=r"test_size=300 must be in \[0, count=200\]"):
        main(["format=official", "count=200", "test_size=300", f"out={tmp_path}"])


def test_official_files_as_task_data(official_9x9):
    task = MazeTask.from_files(official_9x9 / "train.json", official_9x9 / "test.json")
    assert (task.size, task.test_count, task.overlap) == (9, 50, 0)
    records = json.loads((official_9x9 / "test.json").read_text())
    test = task.test_items(50)
    first = test[0]
    assert first.prompt == PINNED_TEST_SEQUENCE.split(" RIGHT", 1)[0]
    assert first.prompt.endswith("GRID_END PATH_START")
    assert first.target == "RIGHT RIGHT RIGHT RIGHT RIGHT RIGHT DOWN DOWN DOWN DOWN DOWN DOWN DONE"
    assert first.meta == {"size": 9, "split": "test", "index": 0}
    for item, record in zip(test, records):
        # prompt + target + eos is the record's sequence, and the target is the BFS answer
        assert f"{item.prompt} {item.target} <eos>" == record["sequence"]
        grid = np.array(item.reference, dtype=np.int8)
        assert item.target == format_answer(solve(grid)) and item.id == grid_id(grid)
    assert task.verify(test, [it.target for it in test]) == [1.0] * 50

    train = task.train_items(250, seed=3)
    assert sorted(it.meta["index"] for it in train) == list(range(250))  # no repeat in a call
    assert [it.id for it in task.train_items(20, seed=3)] == [it.id for it in train[:20]]
    assert task.train_items(20, seed=3) != task.train_items(20, seed=4)
    assert len(task.train_items(600, seed=0)) == 600  # more than the file: passes over it
    with pytest.raises(ValueError, match="test file .* holds 50 mazes"):
        task.test_items(51)

    # make_task reads them through task.data / task.test_data; their size wins over maze_size
    cfg = TaskConfig(
        data=str(official_9x9 / "train.json"), test_data=str(official_9x9 / "test.json")
    )
    via_config = make_task(cfg)
    assert via_config.size == 9 and via_config.test_items(50) == test

    # A test file alone: training mazes are generated, of its size, and never a test maze.
    alone = MazeTask.from_files(test=official_9x9 / "test.json")
    generated = alone.train_items(100, seed=0)
    assert {it.meta["size"] for it in generated} == {9}
    assert {it.id for it in generated}.isdisjoint(it.id for it in test)


def test_a_test_maze_in_the_training_file_is_reported(tmp_path):
    # Size 7 has 192 mazes, so the paper's script puts 45 of these 50 test mazes in train too.
    assert (
        main(
            ["size=7", "count=300", "seed=0", "format=official", "test_size=50", f"out={tmp_path}"]
        )
        == 0
    )
    with pytest.warns(
        UserWarning, match="45 of the 50 test mazes also appear in the training file"
    ):
        task = MazeTask.from_files(tmp_path / "train.json", tmp_path / "test.json")
    assert task.overlap == 45
    train_ids = {grid_id(np.array(it.reference)) for it in task.train_items(250, seed=0)}
    assert sum(it.id in train_ids for it in task.test_items(50)) == 45


@pytest.mark.parametrize(
    "record, message",
    [
        ({"sequence": "<bos> GRID_START"}, "record 0 of .* is .*; give a JSON list of"),
        (
            {"sequence": "GRID_START START GOAL NEWLINE GRID_END DONE", "optimal_path_length": 0},
            "has no PATH_START token",
        ),
        (
            {
                "sequence": "GRID_START START GOAL NEWLINE GRID_END PATH_START RIGHT <eos>",
                "optimal_path_length": 1,
            },
            "must be moves then DONE",
        ),
        (
            {
                "sequence": "GRID_START START LAVA NEWLINE GRID_END PATH_START DONE",
                "optimal_path_length": 0,
            },
            "record 0 of .*unknown grid cell token 'LAVA'",
        ),
        (
            {
                "sequence": "GRID_START START GOAL NEWLINE GRID_END PATH_START RIGHT DONE <eos>",
                "optimal_path_length": 2,
            },
            "optimal_path_length is 2 but the answer has 1 moves",
        ),
        (
            {
                "sequence": "GRID_START START GOAL NEWLINE GRID_END PATH_START LEFT DONE <eos>",
                "optimal_path_length": 1,
            },
            "does not walk from START to GOAL",
        ),
    ],
)
def test_bad_maze_files_are_refused(tmp_path, record, message):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=message):
        MazeTask.from_files(test=path)


def test_missing_or_mismatched_maze_files_are_refused(tmp_path, official_9x9):
    with pytest.raises(FileNotFoundError, match="nope.json' does not exist; write one with"):
        MazeTask.from_files(test=tmp_path / "nope.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no records"):
        MazeTask.from_files(test=tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        MazeTask.from_files(test=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="give a train or a test file"):
        MazeTask.from_files()
    assert main(["size=7", "count=20", "format=official", "test_size=5", f"out={tmp_path}"]) == 0
    with pytest.raises(ValueError, match="train file holds 9x9 mazes and the test file 7x7"):
        MazeTask.from_files(official_9x9 / "train.json", tmp_path / "test.json")
