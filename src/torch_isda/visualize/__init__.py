"""Visualising ISDA's augmented features in pixel space (Wang et al., TPAMI 2021, Appendix E).

* :mod:`.gan`: train the fixed WGAN-GP generator (:func:`train_gan`, :func:`load_generator`);
* :mod:`.conditional_gan`: the class-conditional generators of Table 5's GAN baselines
  (WGAN per class, CGAN, ACGAN, infoGAN; :func:`train_conditional_gan`,
  :func:`load_conditional_generator`), used by the ``gan_augment`` training criterion;
* :mod:`.biggan`: the ImageNet BigGAN of ``pytorch-pretrained-biggan`` as the generator of
  the inversion (:func:`load_biggan`, :class:`ClassBoundGenerator`,
  :func:`run_biggan_visualization`; Figs. 7 and 14), with pixel-space neighbours streamed
  from image folders;
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

from .biggan import (
    BigGANGenerator,
    ClassBoundGenerator,
    imagefolder_nearest_neighbours,
    load_biggan,
    run_biggan_visualization,
)
from .conditional_gan import (
    CONDITIONAL_KINDS,
    ConditionalGANConfig,
    load_conditional_generator,
    train_conditional_gan,
)
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
    "BigGANGenerator",
    "CONDITIONAL_KINDS",
    "ClassBoundGenerator",
    "ConditionalGANConfig",
    "imagefolder_nearest_neighbours",
    "load_biggan",
    "load_conditional_generator",
    "run_biggan_visualization",
    "train_conditional_gan",
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
