#!/usr/bin/env python3
"""Write tests/vectors/extra_signing.json: signing cases the golden file does not cover,
computed with emulator/volc_signer.py, in the golden file's schema.

Usage: python3 emulator/make_extra_vectors.py [OUTPUT]
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import volc_signer  # noqa: E402

OUTPUT = os.path.join(os.path.dirname(HERE), "tests", "vectors", "extra_signing.json")

# Emulator credentials (see docs/emulator.md), so the C client can also replay these live.
EMU_AK, EMU_SK = "AKLTrtcadminEmulatorKey01", "RW11bGF0b3JTZWNyZXQrLz0hS2V5MDE="
STS_AK, STS_SK, STS_TOKEN = "AKTPrtcadminEmulatorTmp01", "VGVtcG9yYXJ5U2VjcmV0S2V5MDE=", "STSrtcadminEmulatorToken01"
HOST = "rtc.volcengineapi.com"
APP = "661e2ebb5ffd4b0e8d3f6b1d"
JSON_HEADERS = {"Accept": "application/json", "Host": HOST, "Content-Type": "application/json"}
GET_HEADERS = {"Accept": "application/json", "Host": HOST}


def ascii_controls_and_printables():
    """Every code point U+0001..U+007F (all single-byte UTF-8 values except NUL)."""
    return "".join(chr(c) for c in range(1, 0x80))


def every_utf8_byte():
    """A valid UTF-8 string whose encoding contains every byte value that can occur in UTF-8:
    all continuation bytes 0x80-0xBF (via U+0080..U+00FF and U+0400..U+043F) and every lead byte
    0xC2-0xF4."""
    chars = [chr(c) for c in range(0x80, 0x100)]
    chars += [chr(((lead & 0x1F) << 6) | 0x20) for lead in range(0xC4, 0xE0)]
    chars += [chr(0x0820)] + [chr(((lead & 0x0F) << 12) | 0x0123) for lead in range(0xE1, 0xF0)]
    chars += [chr(c) for c in (0x10123, 0x40123, 0x80123, 0xC0123, 0x100123)]  # leads F0..F4
    chars += [chr(c) for c in (0x0400 + i for i in range(0x40))]
    text = "".join(chars)
    missing = set(range(0x80, 0xC0)) | set(range(0xC2, 0xF5))
    missing -= set(text.encode("utf-8"))
    assert not missing, sorted(missing)
    return text


def case(name, description, method="POST", path="/", query=None, headers=None, body="",
         ak=EMU_AK, sk=EMU_SK, token="", host=HOST, x_date="20250301T120000Z",
         region="cn-north-1", service="rtc"):
    if headers is None:
        headers = dict(JSON_HEADERS) if method != "GET" else dict(GET_HEADERS)
    body_bytes = body.encode("utf-8")
    inputs = {
        "ak": ak, "sk": sk, "session_token": token, "region": region, "service": service,
        "method": method, "host": host, "path": path, "query": [list(p) for p in (query or [])],
        "x_date": x_date, "headers_before_signing": headers, "body_utf8": body,
        "body_is_bytes": not body.isascii(), "body_hex": body_bytes.hex(),
    }
    out = volc_signer.sign(method, host, path, query or [], headers, body_bytes, ak, sk, region,
                           service, x_date, token or None)
    outputs = {key: out[key] for key in ("x_content_sha256", "signed_headers", "canonical_request",
                                         "hashed_canonical_request", "string_to_sign",
                                         "signing_key_hex", "signature", "authorization")}
    outputs["headers_sent"] = out["headers"]
    return {"name": name, "description": description, "inputs": inputs, "outputs": outputs}


def kick_body(room="room1", user="alice"):
    return json.dumps({"AppId": APP, "RoomId": room, "UserId": user})


def vectors():
    action = [("Action", "GetRoomOnlineUsers"), ("Version", "2023-11-01")]
    return [
        case("emulator_kickuser_post_json",
             "KickUser 2020-12-01 with the emulator's long-term key; replayable against the emulator "
             "(X-Date must then be current, so only the canonical parts are comparable).",
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("emulator_getroomonlineusers_get",
             "GET with query parameters and no body; no Content-Type is added for GET.",
             method="GET", query=action + [("AppId", APP), ("RoomId", "room1")]),
        case("query_every_ascii_code_point",
             "Query value holding every code point U+0001..U+007F (controls, space, symbols, DEL); "
             "only A-Z a-z 0-9 - _ . ~ stay literal, everything else is %XX upper-case.",
             method="GET", query=action + [("v", ascii_controls_and_printables())]),
        case("query_every_utf8_byte_value",
             "Query value whose UTF-8 encoding contains every byte value 0x80-0xBF and every lead byte "
             "0xC2-0xF4 (U+0080..U+00FF, U+07xx, U+0800+, U+FFxx, U+10000+ up to U+100123).",
             method="GET", query=action + [("v", every_utf8_byte())]),
        case("query_code_point_classes",
             "One value per class: control, DEL, U+0080, U+07FF, U+0800, U+FFFF, U+10000, U+1F600, U+10FFFF.",
             method="GET", query=action + [
                 ("c01", "\u0001"), ("c1f", "\u001f"), ("del", "\u007f"), ("u0080", "\u0080"),
                 ("u07ff", "\u07ff"), ("u0800", "\u0800"), ("uffff", "\uffff"), ("u10000", "\U00010000"),
                 ("u1f600", "\U0001F600"), ("u10ffff", "\U0010FFFF")]),
        case("query_reserved_symbols",
             "Space, + * ~ / = & % in keys and values: space is %20 (never +), + is %2B, ~ stays.",
             method="GET", query=action + [("sp ace", "a b"), ("plus+", "1+1"), ("star*", "*"),
                                             ("tilde~", "~"), ("slash/", "a/b"), ("eq=", "a=b"),
                                             ("amp&", "a&b"), ("pct%", "100%"), ("mix", " +*~/=&%")]),
        case("query_utf8_keys_and_values",
             "Non-ASCII keys and values: each UTF-8 byte is %XX; keys sort by raw bytes.",
             method="GET", query=action + [("房间", "一号"), ("é", "ü"), ("_", "underscore")]),
        case("query_repeated_keys_interleaved",
             "Repeated keys interleaved with other keys: values of one key keep the order given, "
             "they are not sorted.",
             method="GET", query=action + [("Tag", "zeta"), ("A", "1"), ("Tag", "alpha"), ("B", ""),
                                           ("Tag", "mid"), ("A", "0")]),
        case("query_prefix_keys",
             "Keys that are prefixes of each other sort by raw bytes: a < a-b < a.b < a_b < a~; "
             "UserId < UserId2 < UserIdX; upper case before lower case.",
             method="GET", query=action + [("a~", "5"), ("a_b", "4"), ("a.b", "3"), ("a-b", "2"), ("a", "1"),
                                           ("UserIdX", "x"), ("UserId2", "2"), ("UserId", "1"), ("userid", "l")]),
        case("query_raw_vs_encoded_order",
             "'_' (0x5F) sorts before 'é' by raw key, though the encoded '%C3%A9' would sort first.",
             method="GET", query=action + [("é", "2"), ("_", "1")]),
        case("query_empty_values",
             "Empty values keep the '=': 'Empty=' (also when repeated).",
             method="GET", query=action + [("Empty", ""), ("K", "v"), ("Empty", ""), ("Z", "")]),
        case("query_none",
             "No query parameters at all: the canonical query line is empty.",
             method="GET", query=[]),
        case("path_spaces_utf8",
             "Path with a space and UTF-8: each segment percent-encoded, '/' kept.",
             method="GET", path="/sub dir/文件 名.json", query=action),
        case("path_double_and_trailing_slash",
             "'//' is not collapsed and a trailing '/' is kept.",
             method="GET", path="//double//slash/", query=action),
        case("path_reserved_chars",
             "Reserved characters in the path are all encoded (only '/' and unreserved kept); "
             "a literal '%' becomes %25 (no double-decoding).",
             method="GET", path="/a!$&'()*+,;=:@b/%41~x", query=action),
        case("path_empty",
             "An empty path is signed as '/'.",
             method="GET", path="", query=action),
        case("host_port_80", "Host 'example.com:80': the :80 port is dropped from the signed value.",
             host="example.com:80", headers={"Host": "example.com:80", "Content-Type": "application/json"},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("host_port_443", "Host 'example.com:443': the :443 port is dropped from the signed value.",
             host="example.com:443", headers={"Host": "example.com:443", "Content-Type": "application/json"},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("host_port_8080", "Host 'example.com:8080': other ports are kept.",
             host="example.com:8080", headers={"Host": "example.com:8080", "Content-Type": "application/json"},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("host_ipv4_with_port", "Host '127.0.0.1:18080' (what a local emulator sees): kept as is.",
             host="127.0.0.1:18080", headers={"Host": "127.0.0.1:18080", "Content-Type": "application/json"},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("host_ipv4_port_80", "Host '127.0.0.1:80': port dropped.",
             host="127.0.0.1:80", headers={"Host": "127.0.0.1:80"}, method="GET", query=action),
        case("date_midnight", "X-Date at 00:00:00 UTC: the scope date is that day.",
             x_date="20240101T000000Z", query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("date_year_boundary_last_second", "Last second of a year.",
             x_date="20241231T235959Z", query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("date_year_boundary_first_second", "First second of the next year.",
             x_date="20250101T000000Z", query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("date_leap_day", "29 February.",
             x_date="20240229T120000Z", query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("secret_with_symbols",
             "Secret containing + / = ! @ # $ % ^ & *: used as literal UTF-8 bytes, not base64-decoded.",
             ak="AKLTsymbolsTest", sk="ab+/=!@#$%^&*cd==",
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("sts_session_token",
             "Temporary credentials (emulator STS key): X-Security-Token is added and signed.",
             ak=STS_AK, sk=STS_SK, token=STS_TOKEN,
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("custom_x_header_and_lowercase_header",
             "X-Custom-Trace and a lower-case 'x-lower-header' are both signed (names matched "
             "case-insensitively; the Python SDK's case-sensitive match would skip the lower-case one); "
             "values verbatim, inner spaces kept; Accept and User-Agent are never signed.",
             headers={"Accept": "application/json", "User-Agent": "rtcadmin/1.0", "Host": HOST,
                      "Content-Type": "application/json", "X-Custom-Trace": "abc  def",
                      "x-lower-header": "Value-With-Case"},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("content_md5_signed",
             "Content-Md5 is one of the always-signed headers.",
             headers={"Host": HOST, "Content-Type": "application/json",
                      "Content-Md5": "yVlGbrOPSFP36cT4JTaSDg=="},
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=kick_body()),
        case("post_without_content_type",
             "POST with no Content-Type: the signer adds 'application/x-www-form-urlencoded; charset=utf-8' "
             "and signs it (as SignerV4.sign does for every non-GET request without one).",
             headers={"Host": HOST}, query=[("Action", "DismissRoom"), ("Version", "2020-12-01")],
             body=json.dumps({"AppId": APP, "RoomId": "room1"})),
        case("post_empty_body",
             "POST with an empty body: payload hash is SHA-256 of the empty string.",
             query=[("Action", "KickUser"), ("Version", "2020-12-01")], body=""),
        case("many_parameters_and_headers",
             "40 query parameters (shuffled, with repeated keys) and 20 X- headers with long values: more "
             "items than a signer may sort on the stack and a canonical request of several kilobytes.",
             query=[("Action", "GetRoomOnlineUsers"), ("Version", "2023-11-01")] +
                   [("P%02d" % ((i * 17) % 30), "v%d-%s" % (i, "x" * (i * 3))) for i in range(38)],
             headers=dict([("Host", HOST), ("Content-Type", "application/json")] +
                          [("X-Custom-%02d" % ((i * 7) % 20), "value-%d-%s" % (i, "y" * (i * 11)))
                           for i in range(20)]),
             body=kick_body()),
        case("post_utf8_body",
             "Raw UTF-8 JSON body (not \\u-escaped): the hash covers the UTF-8 bytes.",
             query=[("Action", "BanRoomUser"), ("Version", "2023-11-01")],
             body=json.dumps({"AppId": APP, "RoomId": "房间一", "UserId": "用户😀", "ForbiddenInterval": 0},
                             ensure_ascii=False)),
    ]


def render():
    doc = {
        "generator": {
            "producer": "emulator/make_extra_vectors.py",
            "signer": "emulator/volc_signer.py :: sign (rules of shared/spec/signing.md)",
            "schema": "same as shared/vectors/signing.json (inputs.query = ordered [key, value] pairs; "
                      "body_hex = exact body bytes)",
            "header_name_rule": "signed headers are chosen by case-insensitive name match",
            "note": "Complements the golden vectors with encoding, ordering, host, date and header edge "
                    "cases. Credentials are fake; the emulator ones appear in docs/emulator.md.",
        },
        "vectors": vectors(),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else OUTPUT
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = render()
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print("wrote %s" % out)


if __name__ == "__main__":
    main()
