"""Checks volc_signer.py against the golden vectors (official Python SDK output) and
against tests/vectors/extra_signing.json.

Golden file: $RTCADMIN_VECTORS, else ../shared/vectors/signing.json relative to the repo root.
"""

import json
import os
import sys
import unittest
from urllib.parse import quote, urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import volc_signer  # noqa: E402

GOLDEN = os.environ.get("RTCADMIN_VECTORS") or os.path.join(REPO, "..", "shared", "vectors", "signing.json")
EXTRA = os.path.join(REPO, "tests", "vectors", "extra_signing.json")


def body_of(inputs):
    if inputs.get("body_hex") is not None:
        return bytes.fromhex(inputs["body_hex"])
    return inputs.get("body_utf8", "").encode("utf-8")


def sign_vector(inputs):
    return volc_signer.sign(
        inputs["method"], inputs["host"], inputs["path"], [tuple(p) for p in inputs["query"]],
        inputs["headers_before_signing"], body_of(inputs), inputs["ak"], inputs["sk"],
        inputs["region"], inputs["service"], inputs["x_date"], inputs.get("session_token") or None)


class VectorFileMixin:
    path = None

    def load(self):
        with open(self.path, encoding="utf-8") as fh:
            data = json.load(fh)
        self.assertIn("generator", data)
        self.assertTrue(data["vectors"])
        return data["vectors"]

    def check_all(self):
        for vec in self.load():
            with self.subTest(vector=vec["name"]):
                got = sign_vector(vec["inputs"])
                want = vec["outputs"]
                for field in ("x_content_sha256", "signed_headers", "canonical_request",
                              "string_to_sign", "signature", "authorization"):
                    self.assertEqual(got[field], want[field], field)
                if "signing_key_hex" in want:
                    self.assertEqual(got["signing_key_hex"], want["signing_key_hex"])
                if "headers_sent" in want:
                    self.assertEqual(got["headers"], want["headers_sent"])


class GoldenVectors(unittest.TestCase, VectorFileMixin):
    path = GOLDEN

    def test_golden_file_present(self):
        self.assertTrue(os.path.isfile(self.path), "golden vectors not found at %s (set RTCADMIN_VECTORS)" % self.path)

    def test_golden_vectors(self):
        if not os.path.isfile(self.path):
            self.fail("golden vectors not found at %s" % self.path)
        self.check_all()


class ExtraVectors(unittest.TestCase, VectorFileMixin):
    path = EXTRA

    def test_extra_vectors(self):
        self.check_all()

    def test_extra_file_is_current(self):
        """The committed file equals what make_extra_vectors.py produces now."""
        import make_extra_vectors
        with open(self.path, encoding="utf-8") as fh:
            self.assertEqual(json.load(fh), json.loads(make_extra_vectors.render()))


class CrossChecks(unittest.TestCase):
    def vectors(self):
        vecs = []
        for path in (GOLDEN, EXTRA):
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    vecs += json.load(fh)["vectors"]
        self.assertTrue(vecs)
        return vecs

    def test_uri_and_query_match_python_quote(self):
        """Canonical URI/query equal what urllib.parse.quote gives (the SDK's own encoder)."""
        for vec in self.vectors():
            inputs = vec["inputs"]
            with self.subTest(vector=vec["name"]):
                lines = vec["outputs"]["canonical_request"].split("\n")
                self.assertEqual(lines[1], quote(inputs["path"] or "/"))
                pairs = sorted(inputs["query"], key=lambda kv: kv[0])
                self.assertEqual(lines[2], "&".join(quote(k, safe="-_.~") + "=" + quote(v, safe="-_.~")
                                                    for k, v in pairs))

    def test_verifier_accepts_every_vector_as_sent_on_the_wire(self):
        """What the emulator recomputes from the wire form equals the signer's result."""
        for vec in self.vectors():
            inputs, outputs = vec["inputs"], vec["outputs"]
            headers = {k.lower(): v for k, v in outputs.get("headers_sent", sign_vector(inputs)["headers"]).items()}
            parts = volc_signer.parse_authorization(outputs["authorization"])
            with self.subTest(vector=vec["name"]):
                self.assertIsNotNone(parts)
                expected, canonical = volc_signer.verify_received(
                    inputs["method"], quote(inputs["path"]), urlencode([tuple(p) for p in inputs["query"]]),
                    lambda name: headers.get(name.lower()), parts["signed_headers"], body_of(inputs),
                    inputs["sk"], inputs["x_date"], parts["date"], parts["region"], parts["service"])
                self.assertEqual(canonical, outputs["canonical_request"])
                self.assertEqual(expected, outputs["signature"])


class Primitives(unittest.TestCase):
    def test_percent_encoding(self):
        enc = volc_signer.percent_encode
        self.assertEqual(enc("a b+*~/=&%"), "a%20b%2B%2A~%2F%3D%26%25")
        self.assertEqual(enc("任"), "%E4%BB%BB")
        self.assertEqual(volc_signer.canonical_uri("/sub dir/文件.json"), "/sub%20dir/%E6%96%87%E4%BB%B6.json")
        self.assertEqual(volc_signer.canonical_uri(""), "/")

    def test_query_sort_is_stable_by_raw_key(self):
        q = [("b", "1"), ("a", "z"), ("B", ""), ("a", "y"), ("a-b", "2"), ("a.b", "3")]
        self.assertEqual(volc_signer.canonical_query(q), "B=&a=z&a=y&a-b=2&a.b=3&b=1")

    def test_received_query_plus_and_pct20(self):
        pairs = volc_signer.received_query_pairs("k=a+b&k=a%20b&e=&n")
        self.assertEqual(pairs, [("k", "a b"), ("k", "a b"), ("e", ""), ("n", "")])

    def test_host_port_stripping(self):
        n = volc_signer.normalize_host
        self.assertEqual(n("h.example:80"), "h.example")
        self.assertEqual(n("h.example:443"), "h.example")
        self.assertEqual(n("h.example:8080"), "h.example:8080")
        self.assertEqual(n("127.0.0.1:80"), "127.0.0.1")

    def test_post_without_content_type_gets_form_default(self):
        out = volc_signer.sign("POST", "h", "/", [], {}, b"", "ak", "sk", "cn-north-1", "rtc", "20240101T000000Z")
        self.assertEqual(out["headers_to_add"]["Content-Type"], volc_signer.DEFAULT_CONTENT_TYPE)
        out = volc_signer.sign("GET", "h", "/", [], {}, b"", "ak", "sk", "cn-north-1", "rtc", "20240101T000000Z")
        self.assertNotIn("Content-Type", out["headers_to_add"])

    def test_parse_authorization(self):
        out = volc_signer.sign("POST", "h", "/", [], {}, b"x", "AK1", "sk", "cn-north-1", "rtc", "20240101T000000Z")
        parts = volc_signer.parse_authorization(out["authorization"])
        self.assertEqual(parts["ak"], "AK1")
        self.assertEqual(parts["date"], "20240101")
        self.assertEqual(parts["signed_headers"], out["signed_headers"].split(";"))
        for bad in ("", "HMAC-SHA256 Credential=AK1/20240101/cn-north-1/rtc/request",
                    out["authorization"].replace(", ", ","),
                    out["authorization"][:-1],
                    out["authorization"].replace("HMAC-SHA256", "AWS4-HMAC-SHA256")):
            self.assertIsNone(volc_signer.parse_authorization(bad), bad)


if __name__ == "__main__":
    unittest.main()
