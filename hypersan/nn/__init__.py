"""Networks: the backbones, the masks, the mask generators, the losses and the subtask-adaptive module.

Modules, bottom to top: `backbones` (residual CNNs with mask sites), `masks` (straight-through utility and
scaling masks), `generators` (the hypernetwork and per-task masks), `losses`, `checkpoint` (the checkpoint
format and subtask keys), `subnet` (the physically pruned network), `model` (`SubtaskAdaptiveNet`).

Imports: the package root, `language` and `data`.
"""
