"""REGISTER requests for the registrar tests."""

from __future__ import annotations

from pathlib import Path

from cluster.sip import Request, parse_message

RFC4475 = Path(__file__).resolve().parents[1] / "conformance" / "rfc4475"


def register_request(
    contacts: list[str] | None = None,
    *,
    user: str = "alice",
    domain: str = "example.com",
    call_id: str = "reg-1@10.0.0.1",
    cseq: int = 1,
    expires: int | str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A parsed REGISTER for ``sip:user@domain`` with one Contact field per entry."""
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{call_id.split('@')[0]}x{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag=f{cseq}",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts or ()]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["Content-Length: 0", "", ""]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def rfc4475(name: str) -> Request:
    message = parse_message((RFC4475 / f"{name}.dat").read_bytes())
    assert isinstance(message, Request)
    return message
