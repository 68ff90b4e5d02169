"""hypersan: subtask-adaptive networks with a mask-generating hypernetwork.

The data flow, one module per step: request -> grounding (vocabulary, grounding) -> condition (descriptions,
text) -> generator (generators, masks) -> model (SubtaskAdaptiveNet, a plain nn.Module) -> statistics
(stats) -> surgery (surgery, subnet) -> artifact (export); the engine (PruningEngine) ties them together
for users, and the CLI is a thin layer over it.
"""
__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .model import SubtaskAdaptiveNet  # noqa: E402
from .export import load_subnet, save_subnet  # noqa: E402
from .engine import PruningEngine  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "SubtaskAdaptiveNet", "PruningEngine", "load_subnet",
           "save_subnet", "__version__"]
