"""The built-in application of a bare worker: OPTIONS answered, the rest 501.

It proves the path edge → shard → edge end to end and names the shard that
answered, so operators (and tests) can see where a Call-ID landed.
"""

from __future__ import annotations

from cluster.sip import Request, Response, make_response

SHARD_HEADER = "X-Sipcluster-Shard"
ALLOW = "OPTIONS, ACK, CANCEL"


class MinimalApplication:
    def __init__(self, shard: str) -> None:
        self.shard = shard

    def on_request(self, request: Request, source) -> Response | None:
        if request.method == "ACK":
            return None
        if request.method == "OPTIONS":
            response = make_response(request, 200)
            response.add("Allow", ALLOW)
            response.add("Accept", "application/sdp")
        else:
            response = make_response(request, 501)
            response.add("Allow", ALLOW)
        response.add(SHARD_HEADER, self.shard)
        return response
