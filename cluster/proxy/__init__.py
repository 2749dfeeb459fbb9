"""The stateful proxy core (RFC 3261 §16), sans-IO: forwarding rules and the
response context. The worker's transaction user drives it."""
