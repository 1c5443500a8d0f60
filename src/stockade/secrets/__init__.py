"""Secret values at rest: envelope encryption under a master key."""

from stockade.secrets.envelope import Sealer
from stockade.secrets.keys import load_master_key

__all__ = ["Sealer", "load_master_key"]
