"""An example routing application for sipcluster.

Run a cluster with it:

    sipcluster up --app examples.routing_app:application

What it does, in a few lines of Python:
- REGISTER: the built-in registrar, with digest authentication;
- calls to 'echo@<local domain>' are redirected (302) to a test service;
- calls from outside the trusted networks to premium numbers (tel-like
  users starting with 900) are refused;
- every other local call is forked in parallel to the callee's registered
  contacts with a 20 s no-answer timeout, and on busy or no answer it goes to
  the callee's voicemail when the user has one configured
  (`sipcluster user set bob@example.com forward_busy=sip:vm-bob@example.com`);
- a response hook stamps which shard handled the call.
"""

from __future__ import annotations

from cluster.app import Application
from cluster.app import default

application = Application("example")

# Reuse the default app's registrar handler: it is plain Python.
application.request("REGISTER")(default.register)


@application.request("INVITE")
def invite(call):
    request = call.request
    if request.to.tag is not None:
        return call.proxy([request.uri], record_route=False)  # in-dialog
    uri = request.uri
    if not call.is_local(uri):
        return default.relay(call)
    user = getattr(uri, "user", None) or ""
    if user == "echo":
        return call.redirect(["sip:echo@127.0.0.1:5090"])
    if user.startswith("900") and not call.from_trusted:
        return call.reply(403, "Premium Numbers Barred")
    contacts = call.lookup(uri)
    if not contacts:
        return call.reply(480)
    call.state["aor"] = uri
    return call.proxy(contacts, parallel=True, timeout=20)


# Everything else (BYE, ACK, OPTIONS, MESSAGE, ...) as the default app does.
application.request("*")(default.route)


@application.failure
def voicemail(call, best):
    aor = call.state.get("aor")
    if aor is None or call.state.get("voicemail"):
        return None
    target = call.settings(aor).get("forward_busy")
    if target and best.status in (408, 480, 486, 487, 600):
        call.state["voicemail"] = True
        return call.proxy([target])
    return None


@application.response
def stamp(call, response):
    response.add("X-Handled-By", call.shard)
