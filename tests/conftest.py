import pytest
import torch

# The suite works on small tensors, where intra-op threads cost more than they give (and a
# busy machine makes their spin-waits far worse); one thread also keeps results reproducible.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory) -> str:
    """A tiny random maze policy saved as a Hugging Face folder (model + tokenizer)."""
    from maxrl.models import build_model, maze_tokenizer

    path = tmp_path_factory.mktemp("tiny_init")
    build_model("tiny", seed=0).save_pretrained(path)
    maze_tokenizer().save_pretrained(path)
    return str(path)
