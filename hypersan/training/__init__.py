"""Training: the joint training of base network and generator, and the evaluation it validates with.

Modules: `optim` (the SGD step loop), `distributed` (torchrun), `evaluate` (per-subtask accuracy, mAP, MACs),
`train` (the trainer: resumable, atomic checkpoints), `adapt` (`hypersan.adapt`: a user's own network on an image
folder, through the trainer).

Imports: everything below it (`prune` and lower).
"""
