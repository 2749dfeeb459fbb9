"""The SIP message layer, sans-IO (RFC 3261 §7, §18.3, §19, §20, §25).

    >>> from cluster.sip import parse_message
    >>> msg = parse_message(data)        # Request or Response, or ParseError
    >>> msg.call_id, msg.cseq, msg.via.branch, msg.from_.tag

Nothing here does I/O or reads a clock.
"""

from .address import NameAddress, parse_name_addr
from .auth import AuthField, parse_auth
from .callid import extract_call_id
from .errors import ParseError
from .fields import CSeq, RetryAfter
from .framing import KEEPALIVE, PONG, StreamFramer
from .message import Header, Message, Request, Response
from .parser import parse_complete, parse_message
from .responses import answer_internal_error, make_response, reason_phrase, reject_malformed
from .uri import AbsoluteURI, SipURI, TelURI, URI, parse_uri
from .via import Via, parse_via

__all__ = [
    "AbsoluteURI", "AuthField", "answer_internal_error", "CSeq", "Header", "KEEPALIVE", "Message", "NameAddress",
    "PONG", "ParseError", "Request", "Response", "RetryAfter", "SipURI", "StreamFramer",
    "TelURI", "URI", "Via", "extract_call_id", "make_response", "parse_auth",
    "parse_complete", "parse_message", "parse_name_addr", "parse_uri", "parse_via", "reason_phrase",
    "reject_malformed",
]
