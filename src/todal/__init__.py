"""todal: deep active learning with Temporal Output Discrepancy (Huang et al., ICCV 2021)."""

from . import strategies
from .discrepancy import output_discrepancy
from .ema import EMA
from .errors import TodalError
from .loop import ActiveLoop
from .objectives import tod_consistency
from .pool import Pool
from .select import select
from .train import TrainConfig, fit

__version__ = "0.1.0"

__all__ = ["ActiveLoop", "EMA", "Pool", "TodalError", "TrainConfig", "fit", "output_discrepancy",
           "select", "strategies", "tod_consistency", "__version__"]
