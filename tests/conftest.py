import torch

# The suite works on small tensors, where intra-op threads cost more than they give (and a
# busy machine makes their spin-waits far worse); one thread also keeps results reproducible.
torch.set_num_threads(1)
