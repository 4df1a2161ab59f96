"""Classification as a one-step RL task, made hard by composing digits into tuples.

The paper's "classification as RL" experiment (docs/method.md, section 5) trains a softmax classifier
where an action is a sampled label and the reward is 1 if it is the true label, so the pass rate
is exactly the softmax probability p of the true class. Its point is the hard start: a ResNet-50
on ImageNet from scratch begins at p about 0.001, where expected-reward RL gets almost no signal
(its gradient is p times the cross-entropy gradient) while maximum likelihood does not care.

A 10-class problem such as scikit-learn's digits starts at p = 0.1, too easy to show that. So an
example here is a tuple of ``arity`` images drawn independently, its features the images
concatenated, and its label the tuple of their labels read as a number in base C
(``label = 100 a + 10 b + c`` for digit triples): C**arity classes, and a start at p = C**-arity.
The default comparison uses triples: 1000 classes and p0 = 0.001, ImageNet's own start, where
REINFORCE stays at chance for 2000 SGD steps while cross-entropy reaches pass@1 above 0.8, and
the whole comparison still runs in a few minutes on two CPU cores. Pairs (100 classes, p0 = 0.01)
were tried first and are too easy: REINFORCE reaches pass@1 of about 0.5 in 1500 steps, so the
regime the paper is about barely shows; they serve the seconds-long smoke config.

Composite classes stay learnable from scratch (the true logit only has to be a sum of one score
per position). Training tuples are drawn afresh every batch (1257^3, about 2e9, distinct digit
triples), so the training stream almost never repeats an example, as in the paper's few-epoch
regime; the test tuples are built from held-out images only, fixed by the data seed.

This task is not a text ``Task`` (``maxrl.tasks.base``): its policy reads feature vectors, so it
hands the trainer tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn


def load_arrays(source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, d) float, labels (n,) int)`` from ``"digits"`` or an ``.npz`` with X, y.

    Labels are re-indexed to 0..C-1 in sorted order of their distinct values, so any integer or
    string labels work.
    """
    if source == "digits":
        bunch = load_digits()
        features, labels = bunch.data, bunch.target
    else:
        path = Path(source)
        if path.suffix != ".npz" or not path.is_file():
            raise ValueError(
                f"data={source!r} is neither 'digits' nor an existing .npz file; pass data=digits "
                "or the path of an .npz holding arrays X (n, d) and y (n,)"
            )
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"X", "y"} - set(arrays.files)
            if missing:
                raise ValueError(
                    f"{source!r} lacks array(s) {sorted(missing)}; it has {arrays.files}; save it "
                    "with np.savez(path, X=features, y=labels)"
                )
            features, labels = arrays["X"], arrays["y"]
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(
            f"need X of shape (n, d) and y of shape (n,); got X {features.shape} and y "
            f"{labels.shape} from data={source!r}"
        )
    if not np.isfinite(features).all():
        raise ValueError(f"X from data={source!r} holds NaN or infinite values; clean them first")
    _, labels = np.unique(labels, return_inverse=True)
    return features, labels.astype(np.int64)


@dataclass(frozen=True)
class CompositeClassification:
    """Tuples of ``arity`` base examples, labelled by their base labels read in base C.

    Build it with :meth:`from_source`. ``train_batch`` draws fresh tuples of training images;
    ``test_set`` is a fixed set of tuples of held-out images (all held-out images when
    ``arity == 1``), the same for every training seed.
    """

    train_features: Tensor  # (n_train, d) float32, standardised on the training images
    train_labels: Tensor  # (n_train,) int64 in [0, base_classes)
    test_features: Tensor  # (test_size, arity * d) float32: the composed test tuples
    test_labels: Tensor  # (test_size,) int64 in [0, num_classes)
    base_classes: int
    arity: int

    @property
    def num_classes(self) -> int:
        return self.base_classes**self.arity

    @property
    def input_dim(self) -> int:
        return self.arity * self.train_features.shape[1]

    @classmethod
    def from_source(
        cls,
        source: str = "digits",
        arity: int = 3,
        test_fraction: float = 0.3,
        test_size: int = 2000,
        seed: int = 0,
    ) -> CompositeClassification:
        """Split base examples by ``seed`` (stratified), standardise, and fix the test tuples."""
        if arity < 1:
            raise ValueError(f"arity={arity} must be >= 1 (1 = the base task, 2 = pairs, ...)")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
        if test_size < 1:
            raise ValueError(f"test_size={test_size} must be >= 1")
        features, labels = load_arrays(source)
        base_classes = int(labels.max()) + 1
        if base_classes < 2:
            raise ValueError(f"data={source!r} has a single class; need at least 2")
        if base_classes**arity > 100_000:
            raise ValueError(
                f"{base_classes} classes to the power arity={arity} is {base_classes**arity} "
                "classes, too many for a softmax here; lower arity"
            )
        counts = np.bincount(labels)
        stratify = labels if counts.min() >= 2 else None
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=test_fraction, random_state=seed, stratify=stratify
        )
        scaler = StandardScaler().fit(x_train)
        x_train = torch.as_tensor(scaler.transform(x_train), dtype=torch.float32)
        x_test = torch.as_tensor(scaler.transform(x_test), dtype=torch.float32)
        y_train = torch.as_tensor(y_train)
        y_test = torch.as_tensor(y_test)
        if arity == 1:
            test_x, test_y = x_test, y_test
        else:
            # Seeded apart from the training seeds: every run is scored on the same tuples.
            gen = torch.Generator().manual_seed(seed)
            index = torch.randint(len(x_test), (test_size, arity), generator=gen)
            test_x, test_y = compose(x_test, y_test, index, base_classes)
        return cls(x_train, y_train, test_x, test_y, base_classes, arity)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` fresh training tuples, drawn uniformly with replacement."""
        index = torch.randint(
            len(self.train_features), (batch_size, self.arity), generator=generator
        )
        return compose(self.train_features, self.train_labels, index, self.base_classes)

    def test_set(self) -> tuple[Tensor, Tensor]:
        return self.test_features, self.test_labels


def compose(
    features: Tensor, labels: Tensor, index: Tensor, base_classes: int
) -> tuple[Tensor, Tensor]:
    """Concatenate the examples ``index`` (n, arity) names; label = sum_j y_j C^(arity-1-j)."""
    n, arity = index.shape
    x = features[index].reshape(n, arity * features.shape[1])
    place = base_classes ** torch.arange(arity - 1, -1, -1)
    y = (labels[index] * place).sum(dim=1)
    return x, y


def build_classifier(input_dim: int, hidden_sizes: Sequence[int], num_classes: int) -> nn.Module:
    """An MLP whose output layer starts at zero, so every example starts at p = 1/num_classes.

    The zero output layer makes the starting pass rate exactly chance, the regime the paper's
    from-scratch ImageNet run starts in, rather than a seed-dependent spread around it.
    """
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    head = nn.Linear(width, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def sample_labels(logits: Tensor, samples: int, generator: torch.Generator | None) -> Tensor:
    """``samples`` labels per row drawn from softmax(logits): (B, samples) int64, one call."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs, samples, replacement=True, generator=generator)


def label_rewards(actions: Tensor, labels: Tensor) -> Tensor:
    """Reward 1 where a sampled label (B, N) equals the example's true label (B,), else 0."""
    if actions.ndim != 2 or labels.ndim != 1 or actions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"actions must be (B, N) and labels (B,) with the same B; got actions "
            f"{tuple(actions.shape)} and labels {tuple(labels.shape)}"
        )
    return (actions == labels[:, None]).to(torch.float32)
