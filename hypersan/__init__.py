"""hypersan: subtask-adaptive networks with a mask-generating hypernetwork."""
__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .model import SubtaskAdaptiveNet  # noqa: E402
from .export import load_subnet, save_subnet  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "SubtaskAdaptiveNet", "load_subnet", "save_subnet", "__version__"]
