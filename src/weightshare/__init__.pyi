"""Type stub of :mod:`weightshare`, whose names are imported on first use."""

from . import distributed as distributed
from . import models as models
from ._checkpoint._check import check as check
from ._checkpoint._report import CheckReport as CheckReport
from ._checkpoint._report import Finding as Finding
from ._checkpoint._report import TensorInfo as TensorInfo
from ._checkpoint._report import TieInfo as TieInfo
from ._checkpoint._saveload import checkpoint_groups as checkpoint_groups
from ._checkpoint._saveload import load as load
from ._checkpoint._saveload import save as save
from ._count import ParameterCount as ParameterCount
from ._count import count_parameters as count_parameters
from ._count import training_state_bytes as training_state_bytes
from ._errors import BrokenTieError as BrokenTieError
from ._errors import CheckpointError as CheckpointError
from ._errors import NotAParameterError as NotAParameterError
from ._errors import TieError as TieError
from ._errors import UnknownNameError as UnknownNameError
from ._fsdp import fsdp_units as fsdp_units
from ._grad import grad_contributions as grad_contributions
from ._groups import is_tied as is_tied
from ._groups import shared_groups as shared_groups
from ._groups import storage_aliases as storage_aliases
from ._guard import TieGuard as TieGuard
from ._optim import param_groups as param_groups
from ._optim import unique_parameters as unique_parameters
from ._tie import retie as retie
from ._tie import tie as tie
from ._tie import untie as untie

__version__: str
__all__: list[str]
