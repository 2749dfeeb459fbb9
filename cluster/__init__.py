"""sipcluster: SIP signaling (RFC 3261) as a sharded, horizontally scaled cluster."""
