"""The routing API (see ``cluster.app.api``) and the built-in default application."""

from .api import (
    Application, AuthOutcome, Call, Challenge, Decision, Proxy, Register, Reply, SetTarget,
    Target,
)

__all__ = ["Application", "AuthOutcome", "Call", "Challenge", "Decision", "Proxy", "Register",
           "Reply", "SetTarget", "Target"]
