"""Volcengine OpenAPI request signer ("HMAC-SHA256", V4 style), standard library only.

Written from the signing rules (docs/signing.md states them), independently of
src/signing.c. It serves two roles:

* ``sign()`` signs a request the way the official Python SDK's ``SignerV4.sign``
  does, returning every intermediate string so tests can compare them;
* the ``verify_*`` helpers let the emulator recompute the canonical request
  from what actually arrived on the wire.

One deliberate difference from the Python SDK: header names are matched
case-insensitively (the SDK compares ``Content-Type``/``Host``/``X-`` exactly),
so a header spelled ``x-trace`` is signed here.
"""

import hashlib
import hmac
import re
from urllib.parse import parse_qsl, unquote_to_bytes

ALGORITHM = "HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_ALWAYS_SIGNED = ("content-type", "content-md5", "host")
# Headers the signer sets itself; a caller-supplied copy in another case is replaced.
_SIGNER_OWNED = ("x-date", "x-content-sha256", "x-security-token", "authorization")


def _utf8(text):
    # surrogateescape lets bytes that were not valid UTF-8 on the wire round-trip unchanged.
    return text.encode("utf-8", "surrogateescape")


def percent_encode(data, keep_slash=False):
    """RFC 3986 encoding of str or bytes: unreserved bytes kept, the rest %XX (upper-case hex)."""
    if isinstance(data, str):
        data = _utf8(data)
    out = []
    for byte in data:
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def canonical_uri(path):
    """Path with each segment percent-encoded and '/' kept; empty path becomes '/'."""
    if not path:
        return "/"
    return percent_encode(path, keep_slash=True)


def canonical_query(pairs):
    """Encode keys and values, sort by raw key bytes (stable: repeated keys keep their order)."""
    ordered = sorted(pairs, key=lambda kv: _utf8(kv[0]))
    return "&".join(percent_encode(k) + "=" + percent_encode(v) for k, v in ordered)


def is_signed_header(name):
    lower = name.lower()
    return lower in _ALWAYS_SIGNED or lower.startswith("x-")


def normalize_host(value):
    """Drop a ':80' or ':443' port, exactly as the SDK does (split on ':', look at the 2nd part)."""
    if ":" in value:
        parts = value.split(":")
        if parts[1] in ("80", "443"):
            return parts[0]
    return value


def canonical_headers(signed):
    """signed: list of (lower-case name, value), already sorted. Returns (block, signed_headers)."""
    block = "".join(name + ":" + value + "\n" for name, value in signed)
    return block, ";".join(name for name, _ in signed)


def build_canonical_request(method, uri, query, signed, payload_hash):
    block, names = canonical_headers(signed)
    return "\n".join([method, uri, query, block, names, payload_hash])


def credential_scope(date, region, service):
    return "/".join([date, region, service, "request"])


def build_string_to_sign(x_date, scope, canonical_request):
    hashed = hashlib.sha256(_utf8(canonical_request)).hexdigest()
    return "\n".join([ALGORITHM, x_date, scope, hashed])


def signing_key(sk, date, region, service):
    """HMAC chain over date, region, service, "request"; the secret is used as-is (no prefix)."""
    key = sk.encode("utf-8")
    for msg in (date, region, service, "request"):
        key = hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()
    return key


def compute_signature(sk, date, region, service, string_to_sign):
    key = signing_key(sk, date, region, service)
    return hmac.new(key, _utf8(string_to_sign), hashlib.sha256).hexdigest()


def authorization_header(ak, scope, signed_headers, signature):
    return "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        ALGORITHM, ak, scope, signed_headers, signature)


def _body_bytes(body):
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def sign(method, host, path, query_pairs, headers, body_bytes, ak, sk, region, service,
         x_date, session_token=None):
    """Sign one request. headers: dict (or list of pairs) present before signing.

    ``host`` is added as a ``Host`` header when the headers have none.
    Returns a dict with the intermediate strings, the headers the signer adds
    (``headers_to_add``) and the complete header set (``headers``).
    """
    body = _body_bytes(body_bytes)
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    final = {}
    for name, value in items:
        if name.lower() in _SIGNER_OWNED:
            continue
        final[name] = value
    lower_names = {name.lower() for name in final}
    added = {}
    if host and "host" not in lower_names:
        final["Host"] = added["Host"] = host
    # Mirrors SignerV4.sign: only a non-GET request without Content-Type gets the form default.
    if method != "GET" and "content-type" not in lower_names:
        final["Content-Type"] = added["Content-Type"] = DEFAULT_CONTENT_TYPE
    payload_hash = hashlib.sha256(body).hexdigest()
    final["X-Date"] = added["X-Date"] = x_date
    final["X-Content-Sha256"] = added["X-Content-Sha256"] = payload_hash
    if session_token:
        final["X-Security-Token"] = added["X-Security-Token"] = session_token

    chosen = {}
    for name, value in final.items():
        if is_signed_header(name):
            lower = name.lower()
            chosen[lower] = normalize_host(value) if lower == "host" else value
    signed = sorted(chosen.items())

    canonical = build_canonical_request(method, canonical_uri(path), canonical_query(query_pairs or []),
                                        signed, payload_hash)
    date = x_date[:8]
    scope = credential_scope(date, region, service)
    sts = build_string_to_sign(x_date, scope, canonical)
    key = signing_key(sk, date, region, service)
    signature = hmac.new(key, _utf8(sts), hashlib.sha256).hexdigest()
    signed_headers = ";".join(name for name, _ in signed)
    authorization = authorization_header(ak, scope, signed_headers, signature)
    final["Authorization"] = added["Authorization"] = authorization
    return {
        "authorization": authorization,
        "canonical_request": canonical,
        "hashed_canonical_request": hashlib.sha256(_utf8(canonical)).hexdigest(),
        "string_to_sign": sts,
        "signed_headers": signed_headers,
        "signature": signature,
        "signing_key_hex": key.hex(),
        "x_content_sha256": payload_hash,
        "headers_to_add": added,
        "headers": final,
    }


# ---------------------------------------------------------------- verification

_AUTH_RE = re.compile(
    r"HMAC-SHA256 Credential=(?P<ak>[^/\s,]+)/(?P<date>[^/\s,]+)/(?P<region>[^/\s,]+)/"
    r"(?P<service>[^/\s,]+)/request, SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*), "
    r"Signature=(?P<signature>[0-9a-fA-F]{64})")
_DATE8_RE = re.compile(r"\d{8}")


def parse_authorization(value):
    """Split an Authorization header; None when it is not the documented shape."""
    match = _AUTH_RE.fullmatch(value or "")
    if not match or not _DATE8_RE.fullmatch(match.group("date")):
        return None
    parts = match.groupdict()
    parts["signed_headers"] = parts.pop("signed").split(";")
    return parts


def wire_text(text):
    """http.server decodes request lines and headers as Latin-1; recover the raw bytes as UTF-8
    text (invalid bytes become surrogates, which _utf8 turns back into the same bytes)."""
    return text.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def received_canonical_uri(raw_path):
    """The path as sent (percent-encoded) → canonical form: decode, then re-encode."""
    return canonical_uri(unquote_to_bytes(_utf8(wire_text(raw_path))))


def received_query_pairs(raw_query):
    """Decode the received query string ('+' and %20 both mean space), keeping empty values."""
    return parse_qsl(wire_text(raw_query), keep_blank_values=True,
                     encoding="utf-8", errors="surrogateescape")


def verify_received(method, raw_path, raw_query, header_value, signed_names, body,
                    sk, x_date, date, region, service):
    """Recompute the signature over a received request.

    header_value(name) returns the received value of a header (or None).
    Returns (expected_signature, canonical_request); raises KeyError(name) if
    a signed header is absent from the request.
    """
    signed = []
    for name in signed_names:
        value = header_value(name)
        if value is None:
            raise KeyError(name)
        value = wire_text(value)
        signed.append((name, normalize_host(value) if name == "host" else value))
    canonical = build_canonical_request(
        method, received_canonical_uri(raw_path), canonical_query(received_query_pairs(raw_query)),
        signed, hashlib.sha256(body).hexdigest())
    sts = build_string_to_sign(x_date, credential_scope(date, region, service), canonical)
    return compute_signature(sk, date, region, service, sts), canonical


def signatures_equal(expected, given):
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
