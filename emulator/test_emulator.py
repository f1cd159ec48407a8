"""End-to-end tests of rtc_emulator.py over real sockets, signing with volc_signer.py.

Run: cd REPO && python3 -m unittest discover -s emulator -p 'test_*.py' -v
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from urllib.parse import quote, urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import volc_signer  # noqa: E402

EMULATOR = os.path.join(HERE, "rtc_emulator.py")
AK1, SK1 = "AKLTrtcadminEmulatorKey01", "RW11bGF0b3JTZWNyZXQrLz0hS2V5MDE="
AK2, SK2 = "AKLTrtcadminEmulatorKey02", "U2Vjb25kQWNjb3VudFNlY3JldDAy"
STS_AK, STS_SK, STS_TOKEN = "AKTPrtcadminEmulatorTmp01", "VGVtcG9yYXJ5U2VjcmV0S2V5MDE=", "STSrtcadminEmulatorToken01"
SECRETS = (SK1, SK2, STS_SK, STS_TOKEN)
APP = "661e2ebb5ffd4b0e8d3f6b1d"
REQUEST_ID_RE = re.compile(r"\d{14}[0-9a-f]{18}")


def x_date_now(offset=0):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + offset))


class Emu:
    """One emulator subprocess."""

    def __init__(self, *args, stderr=subprocess.DEVNULL):
        self.proc = subprocess.Popen([sys.executable, EMULATOR, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.banner = self.proc.stdout.readline().strip()
        match = re.fullmatch(r"rtc-emulator listening on http://127\.0\.0\.1:(\d+)", self.banner)
        if not match:
            self.proc.kill()
            raise RuntimeError("unexpected banner %r" % self.banner)
        self.port = int(match.group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class Client:
    """A keep-alive connection that can sign and send API requests and call control endpoints."""

    def __init__(self, port, timeout=10):
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def close(self):
        self.conn.close()

    def raw(self, method, target, body=b"", headers=None):
        try:
            self.conn.request(method, target, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.conn.close()
            raise
        return resp.status, resp, data

    def control(self, method, name, body=None):
        payload = json.dumps(body).encode() if body is not None else b""
        status, _, data = self.raw(method, "/_emulator/" + name, payload,
                                   {"Content-Type": "application/json"})
        return status, json.loads(data)

    def sign(self, action, version, params=None, method=None, ak=AK1, sk=SK1, token=None, x_date=None,
             region="cn-north-1", service="rtc", extra_query=(), headers=None, path="/", body=None):
        method = method or ("GET" if action == "GetRoomOnlineUsers" else "POST")
        query = [("Action", action), ("Version", version)] if action is not None else []
        if method == "GET":
            query += [(k, v) for k, v in (params or {}).items()]
            body = b"" if body is None else body
        elif body is None:
            body = json.dumps(params or {}).encode()
        query += list(extra_query)
        base = {"Host": "127.0.0.1:%d" % self.port}
        if method != "GET":
            base["Content-Type"] = "application/json"
        base.update(headers or {})
        out = volc_signer.sign(method, None, path, query, base, body, ak, sk, region, service,
                               x_date or x_date_now(), token)
        target = quote(path) + ("?" + urlencode(query) if query else "")
        return method, target, body, dict(out["headers"])

    def send(self, method, target, body, headers):
        status, resp, data = self.raw(method, target, body, headers)
        return status, json.loads(data), resp

    def api(self, *args, **kwargs):
        status, doc, _ = self.send(*self.sign(*args, **kwargs))
        return status, doc


class EmulatorTestCase(unittest.TestCase):
    """Shares one emulator for the class; every test starts from a reset."""

    args = ("--quiet",)

    @classmethod
    def setUpClass(cls):
        cls.emu = Emu(*cls.args)
        cls.client = Client(cls.emu.port)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.emu.stop()

    def setUp(self):
        self.assertEqual(self.client.control("POST", "reset")[0], 200)

    def api(self, *args, **kwargs):
        return self.client.api(*args, **kwargs)

    def state(self, room=None):
        apps = self.client.control("GET", "state")[1]["apps"]
        app = apps[APP]
        return app["rooms"].get(room) if room else app

    def join(self, room, user, **extra):
        return self.client.control("POST", "join", dict(app_id=APP, room_id=room, user_id=user, **extra))

    def assertOk(self, status, doc, result=None):
        self.assertEqual(status, 200, doc)
        meta = doc["ResponseMetadata"]
        self.assertNotIn("Error", meta)
        self.assertTrue(REQUEST_ID_RE.fullmatch(meta["RequestId"]), meta["RequestId"])
        self.assertEqual((meta["Service"], meta["Region"]), ("rtc", "cn-north-1"))
        if result is not None:
            self.assertEqual(doc["Result"], result)
        return doc.get("Result")

    def assertApiError(self, status, doc, want_status, code, code_n=None):
        self.assertEqual(status, want_status, doc)
        self.assertNotIn("Result", doc)
        err = doc["ResponseMetadata"]["Error"]
        self.assertEqual(err["Code"], code)
        self.assertEqual(err.get("CodeN"), code_n)
        self.assertIsInstance(err["Message"], str)
        self.assertTrue(REQUEST_ID_RE.fullmatch(doc["ResponseMetadata"]["RequestId"]))


class ActionTests(EmulatorTestCase):
    def test_kick_user(self):
        self.assertOk(*self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "alice"}),
                      {"message": "success"})
        self.assertEqual(self.state("room1")["users"], ["bob", "carol"])
        # Kicking someone who is not there still succeeds.
        self.assertOk(*self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "alice"}))
        self.assertOk(*self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "nowhere", "UserId": "x"}))

    def test_dismiss_room(self):
        self.assertOk(*self.api("DismissRoom", "2020-12-01", {"AppId": APP, "RoomId": "room1"}),
                      {"message": "success"})
        self.assertEqual(self.state("room1")["users"], [])
        self.assertEqual(self.state("lobby")["users"], ["dave", "erin"])

    def test_get_room_online_users(self):
        self.join("room1", "ghost", invisible=True)
        for version in ("2023-11-01", "2023-08-01"):
            result = self.assertOk(*self.api("GetRoomOnlineUsers", version, {"AppId": APP, "RoomId": "room1"}))
            self.assertEqual(result, {"RoomExists": True, "TotalUser": 4, "TotalInvisibleUser": 1,
                                      "VisibleUserList": ["alice", "bob", "carol"],
                                      "InvisibleUserList": ["ghost"]})
        self.assertOk(*self.api("GetRoomOnlineUsers", "2023-11-01", {"AppId": APP, "RoomId": "empty"}),
                      {"RoomExists": False})
        status, doc = self.api("GetRoomOnlineUsers", "2023-11-01", {"AppId": APP})
        self.assertApiError(status, doc, 400, "MissingParameter", 100002)

    def test_ban_room(self):
        for version, key in (("2023-11-01", "Message"), ("2020-12-01", "message")):
            self.setUp()
            body = {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 600}
            self.assertOk(*self.api("BanRoomUser", version, body), {key: "success"})
            room = self.state("room1")
            self.assertEqual(room["users"], [])
            self.assertAlmostEqual(room["banned_until"], time.time() + 600, delta=5)
            self.assertEqual(self.join("room1", "alice"), (403, {"joined": False, "reason": "room banned"}))
            self.assertOk(*self.api("BanRoomUser", version, body), {key: "Room has been banned"})
            self.assertEqual(self.join("lobby", "alice")[0], 200)

    def test_ban_room_interval_zero_only_kicks(self):
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "RoomId": "room1"}), {"Message": "success"})
        self.assertEqual(self.state("room1")["users"], [])
        self.assertIsNone(self.state("room1")["banned_until"])
        self.assertEqual(self.join("room1", "alice"), (200, {"joined": True}))

    def test_ban_user_in_room(self):
        body = {"AppId": APP, "RoomId": "room1", "UserId": "bob", "ForbiddenInterval": 60}
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", body), {"Message": "success"})
        room = self.state("room1")
        self.assertEqual(room["users"], ["alice", "carol"])
        self.assertIn("bob", room["banned_users"])
        self.assertEqual(self.join("room1", "bob"), (403, {"joined": False, "reason": "user banned"}))
        self.assertEqual(self.join("lobby", "bob")[0], 200)
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", body), {"Message": "User has been banned"})

    def test_ban_user_app_wide(self):
        self.join("lobby", "alice")
        body = {"AppId": APP, "UserId": "alice", "ForbiddenInterval": 60}
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", body), {"Message": "success"})
        app = self.state()
        self.assertNotIn("alice", app["rooms"]["room1"]["users"])
        self.assertNotIn("alice", app["rooms"]["lobby"]["users"])
        self.assertIn("alice", app["user_bans"])
        self.assertEqual(self.join("newroom", "alice")[1]["reason"], "user banned")
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", body), {"Message": "User has been banned"})

    def test_ban_ip(self):
        self.join("lobby", "mallory", ip="203.0.113.7")
        self.join("room1", "trudy", ip="203.0.113.7")
        self.join("room1", "victor", ip="198.51.100.1")
        body = {"AppId": APP, "IP": "203.0.113.7", "ForbiddenInterval": 30}
        self.assertOk(*self.api("BanRoomUser", "2023-11-01", body), {"Message": "success"})
        app = self.state()
        self.assertEqual(app["rooms"]["room1"]["users"], ["alice", "bob", "carol", "victor"])
        self.assertEqual(app["rooms"]["lobby"]["users"], ["dave", "erin"])
        self.assertIn("203.0.113.7", app["ip_bans"])
        self.assertEqual(self.join("room1", "newbie", ip="203.0.113.7")[1]["reason"], "ip banned")
        self.assertEqual(self.join("room1", "newbie", ip="198.51.100.2")[0], 200)

    def test_ban_interval_clamping(self):
        self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 5})
        self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "RoomId": "lobby", "ForbiddenInterval": 10 ** 7})
        now = time.time()
        self.assertAlmostEqual(self.state("room1")["banned_until"], now + 10, delta=2)
        self.assertAlmostEqual(self.state("lobby")["banned_until"], now + 604800, delta=2)

    def test_ban_parameter_errors(self):
        cases = [
            {"AppId": APP},
            {"AppId": APP, "RoomId": ""},
            {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": -1},
            {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": "600"},
            {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 1.5},
            {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": True},
            {"AppId": APP, "IP": "not-an-ip"},
            {"AppId": APP, "UserId": 42},
        ]
        for body in cases:
            with self.subTest(body=body):
                status, doc = self.api("BanRoomUser", "2023-11-01", body)
                self.assertApiError(status, doc, 400, "InvalidParameter")
        self.assertEqual(self.state("room1")["users"], ["alice", "bob", "carol"])

    def test_update_ban_rule(self):
        self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 600})
        self.assertOk(*self.api("UpdateBanRoomUserRule", "2023-11-01",
                                {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 100}), {"Message": "success"})
        self.assertAlmostEqual(self.state("room1")["banned_until"], time.time() + 100, delta=3)
        self.assertOk(*self.api("UpdateBanRoomUserRule", "2020-12-01", {"AppId": APP, "RoomId": "room1"}),
                      {"message": "success"})
        self.assertIsNone(self.state("room1")["banned_until"])
        self.assertEqual(self.join("room1", "alice")[0], 200)
        # Creates an app-wide user ban, then lifts it.
        self.api("UpdateBanRoomUserRule", "2023-11-01", {"AppId": APP, "UserId": "zed", "ForbiddenInterval": 5})
        self.assertAlmostEqual(self.state()["user_bans"]["zed"], time.time() + 10, delta=2)
        self.api("UpdateBanRoomUserRule", "2023-11-01", {"AppId": APP, "UserId": "zed", "ForbiddenInterval": 0})
        self.assertEqual(self.state()["user_bans"], {})
        # Room + user scope.
        self.api("UpdateBanRoomUserRule", "2023-11-01",
                 {"AppId": APP, "RoomId": "lobby", "UserId": "dave", "ForbiddenInterval": 60})
        self.assertIn("dave", self.state("lobby")["banned_users"])
        status, doc = self.api("UpdateBanRoomUserRule", "2023-11-01", {"AppId": APP})
        self.assertApiError(status, doc, 400, "InvalidParameter")

    def test_bans_expire_with_clock(self):
        self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "RoomId": "room1", "ForbiddenInterval": 10})
        self.api("BanRoomUser", "2023-11-01", {"AppId": APP, "UserId": "erin", "ForbiddenInterval": 10})
        self.assertEqual(self.join("room1", "alice")[0], 403)
        self.client.control("POST", "config", {"clock_offset_s": 12})
        self.assertIsNone(self.state("room1")["banned_until"])
        self.assertEqual(self.state()["user_bans"], {})
        self.assertEqual(self.join("room1", "alice")[0], 200)
        self.assertEqual(self.join("room1", "erin")[0], 200)

    def test_ban_and_unban_user_stream(self):
        base = {"AppId": APP, "RoomId": "room1", "UserId": "alice"}
        self.assertOk(*self.api("BanUserStream", "2023-11-01", dict(base, Audio=True)), {"Message": "success"})
        self.assertEqual(self.state("room1")["muted"], {"alice": {"audio": 0}})
        self.assertOk(*self.api("BanUserStream", "2023-11-01", dict(base, Video=True, ForbiddenInterval=60)))
        muted = self.state("room1")["muted"]["alice"]
        self.assertEqual(muted["audio"], 0)
        self.assertAlmostEqual(muted["video"], time.time() + 60, delta=3)
        self.assertOk(*self.api("UnbanUserStream", "2023-11-01", dict(base, Audio=True)), {"Message": "success"})
        self.assertEqual(list(self.state("room1")["muted"]["alice"]), ["video"])
        self.assertOk(*self.api("UnbanUserStream", "2023-11-01", dict(base, Video=True)))
        self.assertEqual(self.state("room1")["muted"], {})
        for bad in (dict(base, Audio="yes"), dict(base, ForbiddenInterval=30), dict(base, ForbiddenInterval=259201),
                    dict(base, ForbiddenInterval=-5), {"AppId": APP, "RoomId": "room1"}):
            with self.subTest(body=bad):
                status, doc = self.api("BanUserStream", "2023-11-01", bad)
                self.assertEqual(status, 400)
                self.assertIn(doc["ResponseMetadata"]["Error"]["Code"], ("InvalidParameter", "MissingParameter"))

    def test_limit_token_privilege(self):
        body = {"AppId": APP, "RoomId": "room1", "UserId": "alice", "Token": "tok", "ForbiddenInterval": 10}
        result = self.assertOk(*self.api("LimitTokenPrivilege", "2023-11-01", body))
        self.assertEqual(result["Message"], "Success")
        self.assertAlmostEqual(result["EndTime"], time.time() + 60, delta=3)
        status, doc = self.api("LimitTokenPrivilege", "2023-11-01", dict(body, Token=None))
        self.assertApiError(status, doc, 400, "MissingParameter", 100002)

    def test_id_rules(self):
        ok_id = "A-z_0.9@" + "x" * 120
        self.assertOk(*self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": ok_id, "UserId": ok_id}))
        cases = [
            ({"RoomId": "bad room", "UserId": "u"}, "InvalidParameter.IllegalRoomID"),
            ({"RoomId": "r" * 129, "UserId": "u"}, "InvalidParameter.IllegalRoomID"),
            ({"RoomId": "房间", "UserId": "u"}, "InvalidParameter.IllegalRoomID"),
            ({"RoomId": "room1", "UserId": "a/b"}, "InvalidParameter.IllegalUserID"),
            ({"RoomId": "room1", "UserId": "u" * 129}, "InvalidParameter.IllegalUserID"),
            ({"RoomId": 7, "UserId": "u"}, "InvalidParameter"),
            ({"RoomId": "room1", "UserId": ""}, "InvalidParameter"),
            ({"RoomId": "room1", "UserId": ["x"]}, "InvalidParameter"),
        ]
        for fields, code in cases:
            with self.subTest(fields=fields):
                status, doc = self.api("KickUser", "2020-12-01", dict(fields, AppId=APP))
                self.assertApiError(status, doc, 400, code)

    def test_app_id_errors(self):
        cases = [
            ({"AppId": "000000000000000000000000"}, 400, "InvalidParameter.NotExistAppId", None),
            ({}, 400, "MissingParameter", 100002),
            ({"AppId": ""}, 400, "InvalidParameter", None),
            ({"AppId": 12}, 400, "InvalidParameter", None),
            ({"AppId": "bad app id"}, 400, "InvalidParameter.IllegalAppId", None),
        ]
        for fields, status_want, code, code_n in cases:
            with self.subTest(fields=fields):
                status, doc = self.api("DismissRoom", "2020-12-01", dict(fields, RoomId="room1"))
                self.assertApiError(status, doc, status_want, code, code_n)

    def test_body_errors(self):
        client = self.client
        for body, code in ((b"", "InvalidParameter.BodyIsEmpty"), (b"{", "InvalidParameter.Unmarshal"),
                           (b"[1]", "InvalidParameter.Unmarshal"), (b"\xff\xfe", "InvalidParameter.Unmarshal")):
            with self.subTest(body=body):
                status, doc, _ = client.send(*client.sign("KickUser", "2020-12-01", body=body))
                self.assertApiError(status, doc, 400, code)

    def test_chunked_request_body(self):
        method, target, body, headers = self.client.sign(
            "KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "bob"})
        conn = http.client.HTTPConnection("127.0.0.1", self.emu.port, timeout=5)
        conn.request(method, target, body=iter([body[:5], body[5:]]), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        self.assertOk(resp.status, json.loads(resp.read()))
        conn.close()
        self.assertEqual(self.state("room1")["users"], ["alice", "carol"])


class AuthTests(EmulatorTestCase):
    BODY = {"AppId": APP, "RoomId": "room1", "UserId": "alice"}

    def request(self, **kwargs):
        return self.client.sign("KickUser", "2020-12-01", self.BODY, **kwargs)

    def send(self, method, target, body, headers):
        status, doc, _ = self.client.send(method, target, body, headers)
        return status, doc

    def test_missing_authorization(self):
        m, t, b, h = self.request()
        del h["Authorization"]
        self.assertApiError(*self.send(m, t, b, h), 401, "MissingAuthenticationToken", 100003)

    def test_malformed_authorization(self):
        m, t, b, h = self.request()
        good = h["Authorization"]
        for bad in ("Bearer abc", good.replace(", ", ","), good.replace("HMAC-SHA256", "AWS4-HMAC-SHA256"),
                    good[:-2], good.replace("/request", "/aws4_request"),
                    good.replace("Credential=%s/" % AK1, "Credential=%s/2024/" % AK1)):
            with self.subTest(auth=bad):
                h["Authorization"] = bad
                self.assertApiError(*self.send(m, t, b, h), 400, "InvalidAuthorization")

    def test_missing_x_date(self):
        m, t, b, h = self.request()
        del h["X-Date"]
        self.assertApiError(*self.send(m, t, b, h), 400, "MissingRequestInfo", 100004)

    def test_invalid_timestamp(self):
        for x_date in (x_date_now(-901 - 5), x_date_now(960)):
            with self.subTest(x_date=x_date):
                self.assertApiError(*self.send(*self.request(x_date=x_date)), 400, "InvalidTimestamp", 100006)
        self.assertOk(*self.send(*self.request(x_date=x_date_now(-600))))
        for bad in ("2024-06-19T07:13:06Z", "20241319T071306Z", "20240619T071306"):
            m, t, b, h = self.request()
            h["X-Date"] = bad
            with self.subTest(x_date=bad):
                self.assertApiError(*self.send(m, t, b, h), 400, "InvalidTimestamp", 100006)

    def test_clock_offset_moves_the_window(self):
        self.client.control("POST", "config", {"clock_offset_s": 3600})
        self.assertApiError(*self.send(*self.request()), 400, "InvalidTimestamp", 100006)
        self.assertOk(*self.send(*self.request(x_date=x_date_now(3600))))

    def test_invalid_access_key(self):
        self.assertApiError(*self.send(*self.request(ak="AKLTunknown")), 401, "InvalidAccessKey", 100009)

    def test_service_not_found(self):
        self.assertApiError(*self.send(*self.request(service="iam")), 404, "ServiceNotFound", 100007)

    def test_second_account(self):
        self.assertOk(*self.send(*self.request(ak=AK2, sk=SK2)))

    def test_signature_mismatch_variants(self):
        def wrong_secret():
            return self.request(sk=SK2)

        def region():
            return self.request(region="cn-beijing")

        def tampered_body():
            m, t, b, h = self.request()
            return m, t, b.replace(b"alice", b"bob"), h

        def tampered_query():
            m, t, b, h = self.request()
            return m, t.replace("2020-12-01", "2020-12-01&Extra=1"), b, h

        def host_not_signed():
            m, t, b, h = self.client.sign("KickUser", "2020-12-01", self.BODY, headers={"Host": ""})
            h.pop("Host")  # signed without host; http.client then adds its own Host
            return m, t, b, h

        def signed_header_missing():
            m, t, b, h = self.request(headers={"X-Trace": "1"})
            del h["X-Trace"]
            return m, t, b, h

        def content_sha_mismatch():
            m, t, b, h = self.request()
            h["X-Content-Sha256"] = "0" * 64
            return m, t, b, h

        def scope_date_differs():
            m, t, b, h = self.request()
            h["Authorization"] = re.sub(r"/(\d{8})/", "/19990101/", h["Authorization"])
            return m, t, b, h

        def upper_case_signature():
            m, t, b, h = self.request()
            head, sig = h["Authorization"].split("Signature=")
            h["Authorization"] = head + "Signature=" + sig.upper()
            return m, t, b, h

        def different_host_value():
            m, t, b, h = self.request()
            h["Host"] = "example.com"
            return m, t, b, h

        for make in (wrong_secret, region, tampered_body, tampered_query, host_not_signed,
                     signed_header_missing, content_sha_mismatch, scope_date_differs,
                     upper_case_signature, different_host_value):
            with self.subTest(variant=make.__name__):
                self.assertApiError(*self.send(*make()), 401, "SignatureDoesNotMatch", 100010)
        self.assertEqual(self.state("room1")["users"], ["alice", "bob", "carol"])

    def crafted(self, signed_names, x_date=None):
        """Sign by hand with a chosen SignedHeaders list (sent headers are whatever is listed)."""
        x_date = x_date or x_date_now()
        body = json.dumps(self.BODY).encode()
        values = {"content-type": "application/json", "host": "127.0.0.1:%d" % self.emu.port,
                  "x-content-sha256": volc_signer.hashlib.sha256(body).hexdigest(), "x-date": x_date}
        signed = [(n, values[n]) for n in signed_names]
        canonical = volc_signer.build_canonical_request(
            "POST", "/", "Action=KickUser&Version=2020-12-01", signed, values["x-content-sha256"])
        scope = volc_signer.credential_scope(x_date[:8], "cn-north-1", "rtc")
        sig = volc_signer.compute_signature(SK1, x_date[:8], "cn-north-1", "rtc",
                                            volc_signer.build_string_to_sign(x_date, scope, canonical))
        headers = {"Content-Type": "application/json", "X-Date": x_date,
                   "Authorization": volc_signer.authorization_header(AK1, scope, ";".join(signed_names), sig)}
        return "POST", "/?Action=KickUser&Version=2020-12-01", body, headers

    def test_required_signed_headers(self):
        self.assertOk(*self.send(*self.crafted(["host", "x-date"])))
        for names in (["content-type", "host"], ["content-type", "x-date"], ["x-date", "host"],
                      ["host", "host", "x-date"]):
            with self.subTest(names=names):
                self.assertApiError(*self.send(*self.crafted(names)), 401, "SignatureDoesNotMatch", 100010)

    def test_host_port_80_is_stripped(self):
        m, t, b, h = self.request(headers={"Host": "rtc.example:80"})
        self.assertEqual(h["Host"], "rtc.example:80")
        self.assertOk(*self.send(m, t, b, h))

    def test_query_plus_and_pct20_both_mean_space(self):
        extra = [("Note", "a b+c"), ("Empty", ""), ("Tag", "z"), ("Tag", "a")]
        m, t, b, h = self.request(extra_query=extra)
        self.assertIn("Note=a+b%2Bc", t)
        self.assertOk(*self.send(m, t, b, h))
        m, t, b, h = self.request(extra_query=extra)
        self.assertOk(*self.send(m, t.replace("Note=a+b", "Note=a%20b"), b, h))
        m, t, b, h = self.request(extra_query=extra)
        self.assertApiError(*self.send(m, t.replace("Tag=z&Tag=a", "Tag=a&Tag=z"), b, h),
                            401, "SignatureDoesNotMatch", 100010)

    def test_encoded_path(self):
        self.assertOk(*self.send(*self.request(path="/sub dir/文件.json")))

    def test_sts_token(self):
        self.assertOk(*self.send(*self.request(ak=STS_AK, sk=STS_SK, token=STS_TOKEN)))
        self.assertApiError(*self.send(*self.request(ak=STS_AK, sk=STS_SK)), 401, "InvalidSecretToken")
        self.assertApiError(*self.send(*self.request(ak=STS_AK, sk=STS_SK, token="STSwrong")),
                            401, "InvalidSecretToken")
        m, t, b, h = self.request(ak=STS_AK, sk=STS_SK)
        h["X-Security-Token"] = STS_TOKEN  # present but not signed
        self.assertApiError(*self.send(m, t, b, h), 401, "InvalidSecretToken")

    def test_action_and_version_errors(self):
        status, doc = self.api(None, None, {}, method="POST")
        self.assertApiError(status, doc, 400, "MissingParameter", 100002)
        status, doc = self.api("KickUser", "2023-11-01", self.BODY)
        self.assertApiError(status, doc, 404, "InvalidActionOrVersion", 100008)
        self.assertEqual(doc["ResponseMetadata"]["Action"], "KickUser")
        self.assertEqual(doc["ResponseMetadata"]["Version"], "2023-11-01")
        status, doc = self.api("NoSuchAction", "2020-12-01", {})
        self.assertApiError(status, doc, 404, "InvalidActionOrVersion", 100008)
        status, doc = self.api("KickUser", "2020-12-01", self.BODY, method="GET")
        self.assertApiError(status, doc, 404, "InvalidActionOrVersion", 100008)
        status, doc = self.api("GetRoomOnlineUsers", "2023-11-01", {"AppId": APP, "RoomId": "room1"}, method="POST")
        self.assertApiError(status, doc, 404, "InvalidActionOrVersion", 100008)


class QpsTests(EmulatorTestCase):
    def update(self, ak=AK1, sk=SK1):
        return self.api("UpdateBanRoomUserRule", "2023-11-01", {"AppId": APP, "RoomId": "room1"}, ak=ak, sk=sk)

    def kick(self):
        return self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "x"})

    def test_default_limit_per_ak_and_action(self):
        for _ in range(20):
            self.assertOk(*self.update())
        self.assertApiError(*self.update(), 429, "FlowLimitExceeded.QPSOverLimit", 100018)
        self.assertOk(*self.update(ak=AK2, sk=SK2))  # another AK has its own window
        self.assertOk(*self.kick())  # another action has its own window
        stats = self.client.control("GET", "stats")[1]
        self.assertEqual(stats["by_action"]["UpdateBanRoomUserRule"], {"ok": 21, "error": 0, "throttled": 1})
        self.assertEqual(stats["codes"], {"FlowLimitExceeded.QPSOverLimit": 1})
        time.sleep(1.05)
        self.assertOk(*self.update())

    def test_sliding_window_and_throttled_requests_do_not_count(self):
        self.client.control("POST", "config", {"qps": {"KickUser": 2}})
        self.assertOk(*self.kick())                      # t=0
        time.sleep(0.6)
        self.assertOk(*self.kick())                      # t=0.6
        self.assertEqual(self.kick()[0], 429)            # t=0.6, window full
        time.sleep(0.6)                                  # t=1.2: the t=0 request left the window
        self.assertOk(*self.kick())
        self.assertEqual(self.kick()[0], 429)
        time.sleep(1.05)                                 # all accepted ones gone; throttled never counted
        self.assertOk(*self.kick())
        self.assertOk(*self.kick())

    def test_throttle_status_and_disable(self):
        self.client.control("POST", "config", {"qps": {"KickUser": 1}, "throttle_status": 503})
        self.assertOk(*self.kick())
        self.assertApiError(*self.kick(), 503, "FlowLimitExceeded.QPSOverLimit", 100018)
        status, view = self.client.control("POST", "config", {"qps_enabled": False})
        self.assertEqual((status, view["qps_enabled"], view["qps"]["KickUser"]), (200, False, 1))
        for _ in range(3):
            self.assertOk(*self.kick())
        self.assertEqual(self.client.control("POST", "config", {"qps": {"KickUser": "x"}})[0], 400)

    def test_other_action_limit_is_twenty(self):
        view = self.client.control("POST", "config", {})[1]
        self.assertEqual(view["qps"]["default"], 20)
        self.assertEqual(view["qps"]["BanRoomUser"], 40)


class FaultTests(EmulatorTestCase):
    KICK = {"AppId": APP, "RoomId": "room1", "UserId": "alice"}

    def faults(self, *specs):
        status, doc = self.client.control("POST", "faults", {"faults": list(specs)})
        self.assertEqual(status, 200, doc)

    def kick(self, client=None, **kwargs):
        client = client or self.client
        return client.send(*client.sign("KickUser", "2020-12-01", self.KICK, **kwargs))

    def test_status500_counts_and_action_filter(self):
        self.faults({"action": "KickUser", "kind": "status500", "count": 2})
        self.assertOk(*self.api("DismissRoom", "2020-12-01", {"AppId": APP, "RoomId": "lobby"}))
        for _ in range(2):
            status, doc, _ = self.kick()
            self.assertApiError(status, doc, 500, "InternalError", 100014)
        self.assertIn("alice", self.state("room1")["users"])  # a faulted request does nothing
        self.assertOk(*self.kick()[:2])
        self.assertNotIn("alice", self.state("room1")["users"])

    def test_fault_waits_for_a_valid_signature(self):
        self.faults({"kind": "status500"})
        status, doc, _ = self.kick(sk=SK2)
        self.assertEqual(status, 401)
        self.assertEqual(self.kick()[0], 500)

    def test_internal_error_200(self):
        self.faults({"action": "*", "kind": "internal_error_200"})
        status, doc, _ = self.kick()
        self.assertApiError(status, doc, 200, "InternalError.GenerateTokenFailed")

    def test_throttle_fault(self):
        self.faults({"kind": "throttle"})
        status, doc, _ = self.kick()
        self.assertApiError(status, doc, 429, "FlowLimitExceeded.QPSOverLimit", 100018)
        stats = self.client.control("GET", "stats")[1]
        self.assertEqual(stats["by_action"]["KickUser"]["throttled"], 1)

    def test_html502(self):
        self.faults({"kind": "html502"})
        status, resp, data = self.client.raw(*self.client.sign("KickUser", "2020-12-01", self.KICK))
        self.assertEqual((status, resp.getheader("Content-Type"), data), (502, "text/html", b"<html>Bad Gateway</html>"))

    def test_malformed(self):
        self.faults({"kind": "malformed"})
        status, resp, data = self.client.raw(*self.client.sign("KickUser", "2020-12-01", self.KICK))
        self.assertEqual((status, resp.getheader("Content-Type")), (200, "application/json"))
        self.assertEqual(data, b'{"ResponseMetadata": {')

    def test_drop_even_without_signature(self):
        self.faults({"kind": "drop", "count": 2})
        other = Client(self.emu.port)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            other.raw("POST", "/?Action=KickUser&Version=2020-12-01", b"{}")
        other = Client(self.emu.port)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.kick(other)
        other = Client(self.emu.port)
        self.assertOk(*self.kick(other)[:2])
        other.close()
        log = self.client.control("GET", "requests?action=KickUser")[1]["requests"]
        self.assertEqual([(e["status"], e.get("fault")) for e in log], [(0, "drop"), (0, "drop"), (200, None)])

    def test_reset_mid_body(self):
        self.faults({"kind": "reset_mid_body"})
        other = Client(self.emu.port)
        with self.assertRaises(http.client.IncompleteRead) as caught:
            self.kick(other)
        self.assertEqual(len(caught.exception.partial), 10)
        self.assertEqual(caught.exception.expected, 990)

    def test_hang(self):
        self.faults({"kind": "hang"})
        other = Client(self.emu.port, timeout=0.5)
        start = time.monotonic()
        with self.assertRaises(socket.timeout):
            self.kick(other)
        self.assertLess(time.monotonic() - start, 2)
        other.close()
        self.assertOk(*self.kick()[:2])

    def test_latency_fault(self):
        self.faults({"kind": "latency:300"})
        start = time.monotonic()
        self.assertOk(*self.kick()[:2])
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        self.assertNotIn("alice", self.state("room1")["users"])
        start = time.monotonic()
        self.assertOk(*self.kick()[:2])
        self.assertLess(time.monotonic() - start, 0.3)

    def test_huge(self):
        self.faults({"kind": "huge"})
        status, resp, data = self.client.raw(*self.client.sign("KickUser", "2020-12-01", self.KICK))
        self.assertEqual((status, len(data)), (200, 2 * 1024 * 1024))
        self.assertEqual(json.loads(data)["Result"]["Message"], "success")

    def test_fault_queue_management(self):
        self.faults({"kind": "status500", "count": 3}, {"action": "DismissRoom", "kind": "huge"})
        self.assertEqual(len(self.client.control("GET", "faults")[1]["faults"]), 2)
        self.assertEqual(self.client.control("DELETE", "faults"), (200, {"faults": []}))
        self.assertOk(*self.kick()[:2])
        for bad in ({"kind": "explode"}, {"kind": "status500", "count": 0}, {"kind": "latency:abc"}, "drop"):
            with self.subTest(bad=bad):
                self.assertEqual(self.client.control("POST", "faults", {"faults": [bad]})[0], 400)


class ControlTests(EmulatorTestCase):
    def test_state_shape(self):
        app = self.state()
        self.assertEqual(set(app), {"rooms", "user_bans", "ip_bans"})
        room = app["rooms"]["room1"]
        self.assertEqual(room["users"], ["alice", "bob", "carol"])
        for key, empty in (("invisible", []), ("muted", {}), ("banned_users", {}), ("banned_until", None)):
            self.assertEqual(room[key], empty)
        self.assertEqual(app["rooms"]["lobby"]["users"], ["dave", "erin"])

    def test_join(self):
        self.assertEqual(self.join("fresh", "zoe", invisible=True), (200, {"joined": True}))
        self.assertEqual(self.state("fresh")["invisible"], ["zoe"])
        self.assertEqual(self.client.control("POST", "join", {"app_id": "nope", "room_id": "r", "user_id": "u"})[0], 404)
        self.assertEqual(self.join("bad room", "zoe")[0], 400)

    def test_reset_restores_everything(self):
        self.api("DismissRoom", "2020-12-01", {"AppId": APP, "RoomId": "room1"})
        self.client.control("POST", "faults", {"faults": [{"kind": "status500"}]})
        self.client.control("POST", "config", {"latency_ms": 50, "qps": {"KickUser": 1}})
        self.assertEqual(self.client.control("POST", "reset"), (200, {"reset": True}))
        self.assertEqual(self.state("room1")["users"], ["alice", "bob", "carol"])
        stats = self.client.control("GET", "stats")[1]
        self.assertEqual((stats["requests"], stats["by_action"], stats["codes"]), (0, {}, {}))
        self.assertEqual(self.client.control("GET", "faults")[1], {"faults": []})
        view = self.client.control("POST", "config", {})[1]
        self.assertEqual((view["latency_ms"], view["qps"]["KickUser"]), (0, 60))
        self.assertEqual(self.client.control("GET", "requests")[1], {"requests": []})

    def test_connection_counting(self):
        self.assertEqual(self.client.control("GET", "stats")[1]["connections"], 0)
        for _ in range(3):
            c = Client(self.emu.port)
            for _ in range(2):  # keep-alive: two requests, one connection
                self.assertOk(*c.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "x"}))
            c.close()
        stats = self.client.control("GET", "stats")[1]
        self.assertEqual((stats["connections"], stats["requests"]), (3, 6))

    def test_stats_and_request_log(self):
        self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "alice"})
        self.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "bad room", "UserId": "alice"})
        self.api("DismissRoom", "2020-12-01", {"AppId": APP, "RoomId": "lobby"}, ak=AK2, sk=SK2)
        stats = self.client.control("GET", "stats")[1]
        self.assertEqual(stats["requests"], 3)
        self.assertEqual(stats["by_action"], {"KickUser": {"ok": 1, "error": 1, "throttled": 0},
                                              "DismissRoom": {"ok": 1, "error": 0, "throttled": 0}})
        self.assertEqual(stats["codes"], {"InvalidParameter.IllegalRoomID": 1})
        log = self.client.control("GET", "requests")[1]["requests"]
        self.assertEqual([(e["ak"], e["action"], e["status"], e["code"]) for e in log], [
            (AK1, "KickUser", 200, None), (AK1, "KickUser", 400, "InvalidParameter.IllegalRoomID"),
            (AK2, "DismissRoom", 200, None)])
        self.assertTrue(all(isinstance(e["t"], float) and abs(e["wall"] - time.time()) < 10 for e in log))
        self.assertEqual([(e.get("RoomId"), e.get("UserId")) for e in log],
                         [("room1", "alice"), ("bad room", "alice"), ("lobby", None)])
        self.assertEqual(len(self.client.control("GET", "requests?action=KickUser")[1]["requests"]), 2)
        self.assertEqual(len(self.client.control("GET", "requests?ak=" + AK2)[1]["requests"]), 1)
        self.assertEqual(len(self.client.control("GET", "requests?ak=%s&action=KickUser" % AK2)[1]["requests"]), 0)

    def test_latency_overlaps_across_connections(self):
        self.client.control("POST", "config", {"latency_ms": 300})
        durations = []

        def one():
            c = Client(self.emu.port)
            start = time.monotonic()
            c.api("KickUser", "2020-12-01", {"AppId": APP, "RoomId": "room1", "UserId": "x"})
            durations.append(time.monotonic() - start)
            c.close()

        start = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertTrue(all(d >= 0.3 for d in durations), durations)
        self.assertLess(time.monotonic() - start, 1.0)

    def test_unknown_control_endpoint(self):
        self.assertEqual(self.client.control("GET", "nope")[0], 404)
        self.assertEqual(self.client.control("POST", "config", {"latency_ms": -1})[0], 400)


class ProcessTests(unittest.TestCase):
    """Lifecycle and command-line options; each test runs its own emulator."""

    def wait_closed(self, port, seconds=5):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return True
            time.sleep(0.05)
        return False

    def test_sigterm_and_sigint_exit_cleanly(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            emu = Emu("--quiet")
            emu.proc.send_signal(sig)
            self.assertEqual(emu.proc.wait(5), 0)
            emu.stop()

    def test_shutdown_endpoint(self):
        emu = Emu("--quiet")
        client = Client(emu.port)
        self.assertEqual(client.control("POST", "shutdown"), (200, {"shutdown": True}))
        self.assertEqual(emu.proc.wait(5), 0)
        emu.stop()

    def test_exit_with_parent(self):
        code = ("import subprocess, sys, time\n"
                "p = subprocess.Popen([sys.executable, %r, '--port', '0', '--quiet', '--exit-with-parent'],"
                " stdout=subprocess.PIPE, text=True)\n"
                "print(p.stdout.readline().strip(), flush=True)\n"
                "time.sleep(60)\n") % EMULATOR
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        banner = parent.stdout.readline().strip()
        port = int(banner.rsplit(":", 1)[1])
        probe = Client(port)
        self.assertEqual(probe.control("GET", "stats")[0], 200)
        probe.close()
        parent.kill()
        parent.wait()
        parent.stdout.close()
        self.assertTrue(self.wait_closed(port), "emulator outlived its parent")

    def test_seed_file_and_options(self):
        seed = {"credentials": {"AKLTseeded": {"sk": "seeded-secret"}},
                "apps": {"app2": {"rooms": {"stage": {"users": ["host1"], "invisible": ["bot1"],
                                                      "ips": {"host1": "192.0.2.1"}}}}}}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(seed, fh)
        emu = Emu("--quiet", "--seed", fh.name, "--no-qps", "--throttle-status", "503", "--latency-ms", "100")
        try:
            client = Client(emu.port)
            start = time.monotonic()
            status, doc = client.api("GetRoomOnlineUsers", "2023-11-01", {"AppId": "app2", "RoomId": "stage"},
                                     ak="AKLTseeded", sk="seeded-secret")
            self.assertGreaterEqual(time.monotonic() - start, 0.1)
            self.assertEqual(doc["Result"], {"RoomExists": True, "TotalUser": 2, "TotalInvisibleUser": 1,
                                             "VisibleUserList": ["host1"], "InvisibleUserList": ["bot1"]})
            status, doc = client.api("DismissRoom", "2020-12-01", {"AppId": APP, "RoomId": "room1"})
            self.assertEqual(doc["ResponseMetadata"]["Error"]["Code"], "InvalidParameter.NotExistAppId")
            client.control("POST", "config", {"qps": {"BanRoomUser": 1}})
            for _ in range(3):  # --no-qps
                status, doc = client.api("BanRoomUser", "2023-11-01", {"AppId": "app2", "IP": "192.0.2.1"})
                self.assertEqual(status, 200)
            self.assertEqual(client.control("GET", "state")[1]["apps"]["app2"]["rooms"]["stage"]["users"], [])
            client.control("POST", "faults", {"faults": [{"kind": "throttle"}]})
            self.assertEqual(client.api("BanRoomUser", "2023-11-01", {"AppId": "app2", "RoomId": "stage"})[0], 503)
            client.close()
        finally:
            emu.stop()
            os.unlink(fh.name)

    def exercise(self, port):
        client = Client(port)
        body = {"AppId": APP, "RoomId": "room1", "UserId": "alice"}
        client.api("KickUser", "2020-12-01", body)
        client.api("KickUser", "2020-12-01", body, ak=STS_AK, sk=STS_SK, token=STS_TOKEN)
        client.api("KickUser", "2020-12-01", body, ak=STS_AK, sk=STS_SK, token="STSwrong")
        client.api("KickUser", "2020-12-01", body, sk=SK2)
        method, target, raw, headers = client.sign("KickUser", "2020-12-01", body)
        client.send(method, target, raw, headers)
        client.close()
        return headers["Authorization"]

    def assertNoSecrets(self, text, authorization):
        for secret in SECRETS + (authorization, authorization.split("Signature=")[1]):
            self.assertNotIn(secret, text)

    def test_stderr_log_has_no_secrets(self):
        with tempfile.TemporaryFile("w+") as err:
            emu = Emu(stderr=err)
            auth = self.exercise(emu.port)
            emu.stop()
            err.seek(0)
            text = err.read()
        self.assertEqual(len(text.strip().splitlines()), 5, text)
        self.assertIn("action=KickUser status=401 code=SignatureDoesNotMatch", text)
        self.assertIn("ak=%s" % STS_AK, text)
        self.assertNoSecrets(text, auth)

    def test_log_file_and_quiet(self):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "emu.log")
            with tempfile.TemporaryFile("w+") as err:
                emu = Emu("--log", log, stderr=err)
                auth = self.exercise(emu.port)
                emu.stop()
                err.seek(0)
                self.assertEqual(err.read(), "")
            with open(log, encoding="utf-8") as fh:
                text = fh.read()
        self.assertEqual(len(text.strip().splitlines()), 5, text)
        self.assertIn("code=InvalidSecretToken", text)
        self.assertNoSecrets(text, auth)



class QpsWindowTest(unittest.TestCase):
    """Emulator.admit directly: arrival times admitted out of order are still checked exactly."""

    def setUp(self):
        import rtc_emulator
        self.mod = rtc_emulator
        self.emu = rtc_emulator.Emulator(rtc_emulator.parse_args(["--port", "0"]), {})
        self.emu.qps["KickUser"] = 2

    def admit(self, arrived):
        try:
            self.emu.admit(AK1, "KickUser", arrived)
            return True
        except self.mod.ApiError as e:
            self.assertEqual(e.code, "FlowLimitExceeded.QPSOverLimit")
            return False

    def test_late_admitted_arrival_is_checked_against_every_window_it_falls_into(self):
        t = time.monotonic() - 3.0
        self.assertTrue(self.admit(t + 1.0))
        self.assertTrue(self.admit(t + 1.5))
        self.assertTrue(self.admit(t + 0.2))   # earlier arrival admitted later: (t+0.5, t+1.5] still holds 2
        self.assertFalse(self.admit(t + 0.8))  # (t, t+1.0] would hold t+0.2, t+0.8, t+1.0
        self.assertFalse(self.admit(t + 1.2))  # (t+0.5, t+1.5], a window ending later, would hold 3
        self.assertTrue(self.admit(t + 2.6))   # (t+1.6, t+2.6]: alone


if __name__ == "__main__":
    unittest.main()
