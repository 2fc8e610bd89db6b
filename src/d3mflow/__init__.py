"""d3mflow: D3M data debiasing (TRAK attribution, group alignment, data selection) for
chest X-ray classifiers, one concept per module:

- ``names``: CheXpert labels, race groups and the slugs used in file names and wildcards.
- ``demo``: a synthetic cohort in the exact MIMIC-CXR-JPG + MIMIC-IV layout, with planted biases.
- ``cohort``: MIMIC files -> one row per image, race groups, splits, per-label binary tasks.
- ``images``: decode-and-resize-once image cache shared by every job.
- ``models``: ResNet-9 / ResNet-50 with a 2-logit head, checkpoints, device choice.
- ``training``: seeded training and continued training.
- ``projectors``: fast projections and per-example gradients plugged into ``traker``.
- ``attribution``: TRAK features with ``traker``, one ensemble model per job.
- ``scores``: per-group attribution tau(g) by linearity, and per-target scores, from the features.
- ``alignment``: group alignment scores A_i from tau(g) and group losses.
- ``selection``: which training images D3M keeps.
- ``controls``: the training-row table (image_index, weight) of every continued-training method.
- ``auto_d3m``: D3M on pseudo-groups from the TRAK scores, without race labels.
- ``prediction``: per-image probabilities and losses of a checkpoint.
- ``evaluation``: metrics per race group at a validation-chosen threshold, paired bootstrap CIs
  across methods and seeds, and the label ranking for ``labels: auto``.
- ``report``: the talk's tables, removals and detection scores.
"""

__version__ = "0.1.0"
