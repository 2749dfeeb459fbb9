"""sipcluster: SIP signaling (RFC 3261) as a sharded, horizontally scaled cluster."""

# The one place the version is written: the package metadata reads it
# (pyproject.toml), `sipcluster --version` prints it, and a test holds the
# Helm chart's appVersion and the Containerfile's VERSION to it.
__version__ = "0.1.0"
