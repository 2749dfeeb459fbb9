"""The worker's transaction user, sans-IO (``TransactionUser``) and its outputs."""

from .core import TUObserver, TransactionUser
from .outputs import EdgeRoute, StartRegistration, route_of

__all__ = ["EdgeRoute", "StartRegistration", "TUObserver", "TransactionUser", "route_of"]
