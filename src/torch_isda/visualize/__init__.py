"""Visualising ISDA's augmented features in pixel space (Wang et al., TPAMI 2021, Appendix E).

* :mod:`.gan`: train the fixed WGAN-GP generator (:func:`train_gan`, :func:`load_generator`);
* :mod:`.inversion`: Step I (:func:`invert`, Eq. 20), Step II (:func:`augment_step`, Eq. 21),
  :func:`visualize`, :func:`nearest_neighbours` (Fig. 14) and the runner
  :func:`run_visualization`;
* :mod:`.grid`: PNG grids (matplotlib, imported only when a PNG is written).

Typical use (what ``isda gan train`` / ``isda visualize`` wrap)::

    from torch_isda.visualize import train_gan, load_generator, run_visualization

    train_gan("digits", "runs/gan")                       # gan.pt, samples.png, gan_log.jsonl
    G = load_generator("runs/gan")
    run_visualization("runs/vis", model, criterion, G, dataset, lam=0.5)
    # -> augmented.png, neighbours.png, visualization.json

Nothing here is imported by ``torch_isda`` itself.
"""

from .gan import GANConfig, gradient_penalty, load_gan_checkpoint, load_generator, train_gan
from .inversion import (
    InversionResult,
    VisualizationResult,
    augment_features,
    augment_step,
    classifier_feature_fn,
    invert,
    nearest_neighbours,
    normalize_latent,
    run_visualization,
    save_visualization,
    visualize,
)

__all__ = [
    "GANConfig",
    "InversionResult",
    "VisualizationResult",
    "augment_features",
    "augment_step",
    "classifier_feature_fn",
    "gradient_penalty",
    "invert",
    "load_gan_checkpoint",
    "load_generator",
    "nearest_neighbours",
    "normalize_latent",
    "run_visualization",
    "save_visualization",
    "train_gan",
    "visualize",
]
