"""Loading the routing application named in config as ``module:object``."""

from __future__ import annotations

import importlib

from cluster.app.api import Application
from cluster.config import Config


class ApplicationError(RuntimeError):
    pass


def load_application(spec: str, shard: str) -> Application:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ApplicationError(f"worker.app: cannot import {module_name!r}: {error}") from error
    try:
        app = getattr(module, attr or "application")
    except AttributeError:
        raise ApplicationError(f"worker.app: {module_name!r} has no {attr!r}") from None
    if callable(app) and not isinstance(app, Application):
        app = app()
    if not isinstance(app, Application):
        raise ApplicationError(f"worker.app: {spec!r} is not a cluster.app.Application")
    return app


def apply_redirect_domains(application: Application, config: Config) -> None:
    """``worker.redirect_domains`` into the application's ``redirect_domains``:
    always for the default application, for another when the field is set."""
    from cluster.app.default import application as default_app
    domains = config.worker.redirect_domains
    if application is default_app or domains:
        application.redirect_domains.update(d.lower() for d in domains)
