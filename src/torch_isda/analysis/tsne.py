"""t-SNE of the deep features with and without ISDA (TPAMI paper, Section 6.5.1, Fig. 8).

Trains (or reuses, ``isda compare``'s machinery in ``OUT/runs``) one model per criterion
(default ``ce`` and ``isda``), extracts the deep features ``a = forward_features(x)`` of the
test set with the final weights, embeds them in 2-D with scikit-learn's t-SNE (one
embedding per model, same settings) and draws them side by side, coloured by class. The
table adds numbers to the picture: the test error, the silhouette score of the classes in
the feature space and in the embedding, and the ratio of the mean within-class distance to
the class centroid over the mean distance between centroids (smaller: tighter, better
separated clusters, the paper's observation for ISDA).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..train.config import TrainConfig
from ..train.reporting import plural
from .common import Logger, Table, pyplot, save_figure, sweep, write_table

__all__ = ["cluster_ratio", "embed", "extract_test_features", "run_tsne"]


def extract_test_features(run_dir: Union[str, Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Test-set deep features and labels of a finished ``isda train`` run (its
    ``checkpoint.pt``, model rebuilt from ``config.json``), plus the class names."""
    from ..train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from ..train.seeding import num_threads
    from ..train.engine import Engine
    from .resolve import resolve_run

    run_dir = Path(run_dir)
    config = resolve_run(TrainConfig.load(run_dir / "config.json"))
    trainer = Engine(config, quiet=True)
    with num_threads(config.threads):
        trainer.build()
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        trainer.task.model.load_state_dict(state["model"])
        trainer.task.model.eval()
        feats, labels = [], []
        with torch.no_grad():
            for x, y in trainer.task.test_batches:
                x, y = trainer.task.to_device(x, y)
                feats.append(trainer.task.features_fn(x).float().cpu())
                labels.append(y.cpu())
    names = [str(c) for c in range(trainer.task.num_classes)]
    return torch.cat(feats).numpy(), torch.cat(labels).numpy(), names


def cluster_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """Mean distance of a sample to its class centroid over the mean pairwise distance
    between class centroids."""
    classes = np.unique(y)
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    within = np.mean([np.linalg.norm(x[y == c] - centroids[i], axis=1).mean()
                      for i, c in enumerate(classes)])
    diff = centroids[:, None, :] - centroids[None, :, :]
    dist = np.linalg.norm(diff, axis=-1)
    between = dist[np.triu_indices(len(classes), 1)].mean()
    return float(within / between)


def embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (PCA initialisation, automatic learning rate, fixed seed)."""
    from sklearn.manifold import TSNE

    perplexity = min(float(perplexity), max(2.0, (len(features) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    return tsne.fit_transform(features.astype(np.float32))


def run_tsne(base: TrainConfig, out: Union[str, Path], *,
             losses: Union[str, Sequence[str]] = ("ce", "isda"), seed: int = 0,
             max_points: int = 2000, perplexity: float = 30.0, force: bool = False,
             quiet: bool = False, log: Optional[Logger] = None) -> dict[str, Any]:
    """Train/reuse one run per loss, embed its test features; writes ``OUT/tsne.{md,csv,png}``
    (embeddings cached in ``OUT/embeddings/<loss>.npz``)."""
    from sklearn.metrics import silhouette_score

    from ..train.compare import parse_losses
    from ..train.criteria import spec_dirname

    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    if int(max_points) < 10:
        raise ValueError(f"max_points must be >= 10; got {max_points}")
    losses = parse_losses(losses)
    out = Path(out)
    methods = sweep(base, losses, [seed], out / "runs", force=force, quiet=quiet, log=log)
    panels = []
    for loss in losses:
        run_dir = out / "runs" / spec_dirname(loss) / f"seed{seed}"
        cache = out / "embeddings" / f"{spec_dirname(loss)}.npz"
        feats, labels, emb = _cached_embedding(loss, run_dir, cache, seed, max_points, perplexity,
                                               force, say)
        panels.append({
            "loss": loss, "embedding": emb, "labels": labels,
            "error": methods[loss].final_errors[0],
            "sil_features": float(silhouette_score(feats, labels)),
            "sil_embedding": float(silhouette_score(emb, labels)),
            "ratio_features": cluster_ratio(feats, labels),
            "ratio_embedding": cluster_ratio(emb, labels),
            "points": len(labels),
        })
    from .resolve import resolve_run

    config = resolve_run(base.replace(loss=losses[0], seed=seed, out=str(out / "runs")))
    table = _tsne_table(panels, config, seed)
    md, csv_path, text = write_table(out, "tsne", table)
    png = _plot(out / "tsne.png", panels, config)
    return {"table": text, "panels": panels, "table_md": md, "table_csv": csv_path, "png": png}


def _cached_embedding(loss: str, run_dir: Path, cache: Path, seed: int, max_points: int,
                      perplexity: float, force: bool, say: Callable[[str], None]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, labels, embedding)`` of a run's test set: from ``cache`` when it was made
    with the same run and settings, else computed and cached (atomically)."""
    key = json.dumps({"run_mtime": (run_dir / "result.json").stat().st_mtime_ns,
                      "max_points": int(max_points), "perplexity": float(perplexity),
                      "seed": int(seed)}, sort_keys=True)
    if cache.is_file() and not force and str(np.load(cache)["key"]) == key:
        data = np.load(cache)
        say(f"t-SNE of {loss}: reused {cache}")
        return data["features"], data["labels"], data["embedding"]
    say(f"t-SNE of {loss}: extracting test features of {run_dir} ...")
    feats, labels, _ = extract_test_features(run_dir)
    if len(labels) > max_points:  # a fixed random subset, the same for every model
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:max_points])
        feats, labels = feats[keep], labels[keep]
    emb = embed(feats, seed, perplexity)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez_compressed(tmp, features=feats, labels=labels, embedding=emb,
                        key=np.array(key))
    tmp.replace(cache)
    say(f"t-SNE of {loss}: {len(labels)} points embedded")
    return feats, labels, emb


def _tsne_table(panels: list[dict[str, Any]], config: Any, seed: int) -> Table:
    """The markdown / CSV table of :func:`run_tsne`."""
    from ..train.method_names import display_name

    return Table(
        caption=(f"t-SNE of the test-set deep features (Fig. 8): {config.model} on "
                 f"{config.dataset}, seed {seed}, {plural(config.epochs, 'epoch')}. Silhouette: class "
                 f"separation (higher is better, in [-1, 1]); within/between: mean distance to "
                 f"the class centroid over mean distance between centroids (lower: tighter "
                 f"clusters)."),
        headers=["method", "test error (%)", "points", "silhouette (features)",
                 "silhouette (t-SNE)", "within/between (features)", "within/between (t-SNE)"],
        rows=[[display_name(p["loss"]), f"{p['error']:.2f}", p["points"],
               f"{p['sil_features']:.3f}", f"{p['sil_embedding']:.3f}",
               f"{p['ratio_features']:.3f}", f"{p['ratio_embedding']:.3f}"] for p in panels],
        csv_headers=["loss", "test_error", "points", "silhouette_features",
                     "silhouette_embedding", "ratio_features", "ratio_embedding", "dataset",
                     "model", "seed", "epochs"],
        csv_rows=[[p["loss"], p["error"], p["points"], p["sil_features"], p["sil_embedding"],
                   p["ratio_features"], p["ratio_embedding"], config.dataset, config.model,
                   seed, config.epochs] for p in panels],
    )


def _plot(path: Path, panels: list[dict[str, Any]], config: TrainConfig) -> Path:
    from ..train.method_names import display_name

    plt = pyplot()
    n = len(panels)
    num_classes = int(max(int(p["labels"].max()) for p in panels)) + 1
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), dpi=120, squeeze=False)
    for ax, p in zip(axes[0], panels):
        emb, labels = p["embedding"], p["labels"]
        colors = cmap(labels / max(1, num_classes - 1)) if num_classes > 20 else cmap(labels % 20)
        ax.scatter(emb[:, 0], emb[:, 1], c=colors, s=6, lw=0, alpha=0.85)
        name = display_name(p["loss"])
        ax.set_title(f"{name}: error {p['error']:.2f}%, silhouette {p['sil_embedding']:.2f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if num_classes <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(c % 20), markersize=5,
                              label=str(c)) for c in range(num_classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(num_classes, 10), fontsize=7,
                   title="class", title_fontsize=7, frameon=False)
    fig.suptitle(f"t-SNE of test-set deep features: {config.model} on {config.dataset}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if num_classes <= 20 else 0, 1, 0.95))
    return save_figure(fig, path)
