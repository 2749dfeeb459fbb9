"""A node's CurveZMQ key pair for its links (DESIGN §3).

Every link is a CURVE connection: the bound PULL socket is a CURVE server
with the node's key pair, each PUSH socket a CURVE client that knows its
peer's public key from the peer's membership record (``Member.curve_key``).

Where the pair comes from:

* ``cluster.link_secret_dir`` set: the directory holds ``link.key`` (the
  public key) and ``link.key_secret`` (both keys), in pyzmq's ``zmq.auth``
  certificate format, as ``sipcluster keys generate --dir DIR`` writes them.
  A file that is missing, unreadable or malformed, or a pair whose halves do
  not belong together, stops the node at start-up with a ``ConfigError``
  naming ``cluster.link_secret_dir``.
* unset: a fresh pair is made in memory at start. The links are encrypted
  and authenticated all the same, because what a peer trusts is the public
  key the node publishes in etcd under its lease, not the key's origin.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from cluster.config import ConfigError
from cluster.sharding.membership import is_curve_key

__all__ = ["LinkKeys", "PUBLIC_FILE", "SECRET_FILE", "load_keys", "node_keys", "write_keys"]

PUBLIC_FILE = "link.key"
SECRET_FILE = "link.key_secret"
_FIELD = "cluster.link_secret_dir"

@dataclass(frozen=True, slots=True)
class LinkKeys:
    """A node's key pair, both halves Z85 text (what ZeroMQ's options take)."""

    public: bytes
    secret: bytes = b""

    @classmethod
    def generate(cls) -> LinkKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def __repr__(self) -> str:
        # Never print the secret half (logs, tracebacks).
        return f"LinkKeys(public={self.public.decode()!r})"


def node_keys(link_secret_dir: str | None) -> LinkKeys:
    """The node's key pair: read from ``link_secret_dir``, or made now."""
    if link_secret_dir is None:
        return LinkKeys.generate()
    return load_keys(link_secret_dir)


def load_keys(directory: str | os.PathLike[str]) -> LinkKeys:
    """Read the pair ``write_keys`` wrote; ConfigError naming cluster.link_secret_dir."""
    path = Path(directory) / SECRET_FILE
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ConfigError(_FIELD, f"cannot read the link key pair {str(path)!r}: {error}") from None
    if secret is None or not is_curve_key(public) or not is_curve_key(secret):
        raise ConfigError(_FIELD, f"{str(path)!r} does not hold a Z85 public-key and secret-key "
                                  "(40 characters each); write one with `sipcluster keys generate`")
    try:
        derived = zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError):
        derived = None  # a Z85 group beyond 2**32
    if derived != public:
        raise ConfigError(_FIELD, f"{str(path)!r}: public-key is not the secret-key's public key")
    published = Path(directory) / PUBLIC_FILE
    if published.exists():
        try:
            other, _ = zmq.auth.load_certificate(published)
        except (OSError, ValueError) as error:
            raise ConfigError(_FIELD, f"cannot read {str(published)!r}: {error}") from None
        if other != public:
            raise ConfigError(_FIELD, f"{str(published)!r} and {SECRET_FILE} hold different public keys")
    return LinkKeys(public, secret)


_BANNER = ("#   ZeroMQ CURVE {what} certificate, written by `sipcluster keys generate` on {when}\n"
           "#   {note}\n\n")


def write_keys(directory: str | os.PathLike[str], keys: LinkKeys | None = None, *,
               force: bool = False) -> tuple[Path, Path]:
    """Write ``keys`` (a new pair by default) into ``directory`` as
    ``link.key`` (mode 0644) and ``link.key_secret`` (mode 0600, created
    with that mode: never readable by others, not even for a moment).
    FileExistsError unless ``force`` when either file exists."""
    keys = keys or LinkKeys.generate()
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = target / PUBLIC_FILE, target / SECRET_FILE
    if not force:
        for path in (public_path, secret_path):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to replace the key pair)")
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    public_text = _BANNER.format(what="public", when=when, note="Safe to share.") + \
        f'metadata\ncurve\n    public-key = "{keys.public.decode()}"\n'
    secret_text = _BANNER.format(what="secret", when=when, note="Keep private (mode 0600).") + \
        f'metadata\ncurve\n    public-key = "{keys.public.decode()}"\n' \
        f'    secret-key = "{keys.secret.decode()}"\n'
    for path, text, mode in ((secret_path, secret_text, 0o600), (public_path, public_text, 0o644)):
        if force and path.exists():
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text)
        os.chmod(path, mode)  # the umask may have taken bits away from 0644
    return public_path, secret_path
