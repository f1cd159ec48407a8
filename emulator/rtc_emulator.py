#!/usr/bin/env python3
"""Local emulator of the Volcengine RTC OpenAPI moderation actions (standard library only).

It verifies V4 signatures, enforces per-(AK, Action) QPS limits, keeps an
in-memory model of apps, rooms, online users and bans, and offers
/_emulator/* control endpoints for tests (state, join, reset, config,
fault injection, stats, request log, shutdown). See docs/emulator.md.
"""

import argparse
import bisect
import copy
import datetime
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import volc_signer  # noqa: E402

DEFAULT_CREDENTIALS = {
    "AKLTrtcadminEmulatorKey01": {"sk": "RW11bGF0b3JTZWNyZXQrLz0hS2V5MDE="},
    "AKLTrtcadminEmulatorKey02": {"sk": "U2Vjb25kQWNjb3VudFNlY3JldDAy"},
    "AKTPrtcadminEmulatorTmp01": {"sk": "VGVtcG9yYXJ5U2VjcmV0S2V5MDE=",
                                  "session_token": "STSrtcadminEmulatorToken01"},
}
DEFAULT_APPS = {
    "661e2ebb5ffd4b0e8d3f6b1d": {"rooms": {
        "room1": {"users": ["alice", "bob", "carol"]},
        "lobby": {"users": ["dave", "erin"]},
    }},
}
DEFAULT_QPS = {"KickUser": 60, "BanRoomUser": 40, "UpdateBanRoomUserRule": 20, "BanUserStream": 60,
               "UnbanUserStream": 60, "GetRoomOnlineUsers": 40, "DismissRoom": 60,
               "LimitTokenPrivilege": 40}
OTHER_ACTION_QPS = 20
MAX_SKEW_S = 900
MAX_BAN_S = 604800
ID_RE = re.compile(r"[A-Za-z0-9@._-]{1,128}")
XDATE_RE = re.compile(r"\d{8}T\d{6}Z")
FAULT_KINDS = {"status500", "internal_error_200", "throttle", "html502", "malformed", "drop",
               "reset_mid_body", "hang", "huge"}
TRANSPORT_FAULTS = {"drop", "reset_mid_body"}  # applied before the signature is checked


class ApiError(Exception):
    """An error answered with the standard envelope."""

    def __init__(self, status, code, message, code_n=None, outcome="error"):
        super().__init__(message)
        self.status, self.code, self.message, self.code_n, self.outcome = status, code, message, code_n, outcome


def bad_param(message, code="InvalidParameter"):
    return ApiError(400, code, message)


# ------------------------------------------------------------------ state model

def new_room():
    # users: {uid: {"invisible": bool, "ip": str|None}}; expiries are unix seconds, 0 = indefinite.
    return {"users": {}, "muted": {}, "banned_users": {}, "banned_until": None, "limited_tokens": {}}


def build_apps(seed_apps):
    apps = {}
    for app_id, app in seed_apps.items():
        rooms = {}
        for room_id, room in (app.get("rooms") or {}).items():
            r = new_room()
            ips = room.get("ips") or {}
            for uid in room.get("users") or []:
                r["users"][uid] = {"invisible": False, "ip": ips.get(uid)}
            for uid in room.get("invisible") or []:
                r["users"][uid] = {"invisible": True, "ip": ips.get(uid)}
            rooms[room_id] = r
        apps[app_id] = {"rooms": rooms, "user_bans": {}, "ip_bans": {}}
    return apps


class Emulator:
    """All mutable state, guarded by one lock (requests are short; contention is irrelevant)."""

    def __init__(self, opts, seed):
        self.opts = opts
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.credentials = dict(DEFAULT_CREDENTIALS)
        self.credentials.update(seed.get("credentials") or {})
        self.seed_apps = seed.get("apps") or DEFAULT_APPS
        self.log_file = open(opts.log, "a", buffering=1, encoding="utf-8") if opts.log else None
        self.reset()

    def reset(self):
        with self.lock:
            self.apps = build_apps(copy.deepcopy(self.seed_apps))
            self.qps = dict(DEFAULT_QPS)
            self.qps_default = OTHER_ACTION_QPS
            self.qps_enabled = not self.opts.no_qps
            self.latency_ms = self.opts.latency_ms
            self.throttle_status = self.opts.throttle_status
            self.clock_offset = 0.0
            self.windows = {}  # (ak, action) -> sorted list of arrival times of accepted requests
            self.faults = []
            self.connections = 0
            self.requests = 0
            self.by_action = {}
            self.codes = {}
            self.request_log = deque(maxlen=100000)

    def now(self):
        """The emulator's wall clock (shifted by clock_offset_s): X-Date checks and ban expiry."""
        return time.time() + self.clock_offset

    def active(self, expiry):
        return expiry is not None and (expiry == 0 or expiry > self.now())

    def expiry_in(self, seconds):
        return 0 if seconds == 0 else math.ceil(self.now() + seconds)

    # -- QPS: exact sliding window over the arrival times of accepted requests. `arrived` is when the
    # request line was read: handler threads admit requests later and not always in arrival order
    # (thread scheduling), so every 1 s window the new arrival falls into is checked, not only the
    # one ending at it.
    def admit(self, ak, action, arrived=None):
        if not self.qps_enabled:
            return
        limit = self.qps.get(action, self.qps_default)
        with self.lock:
            now = time.monotonic()
            t = now if arrived is None else min(arrived, now)
            window = self.windows.setdefault((ak, action), [])
            # A request still being handled arrived at most a few seconds ago.
            del window[:bisect.bisect_right(window, now - 5.0)]
            bisect.insort(window, t)
            i = bisect.bisect_left(window, t)
            ends = [t] + [s for s in window[i + 1:] if s < t + 1.0]
            if any(bisect.bisect_right(window, x) - bisect.bisect_right(window, x - 1.0) > limit for x in ends):
                window.pop(i)
                raise throttled(self)

    def take_fault(self, action, transport):
        with self.lock:
            for fault in self.faults:
                if fault["action"] in ("*", action) and (fault["kind"] in TRANSPORT_FAULTS) == transport:
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self.faults.remove(fault)
                    return fault["kind"]
        return None

    def record(self, ak, action, status, code, outcome, fault=None, target=None):
        with self.lock:
            self.requests += 1
            counts = self.by_action.setdefault(action or "(none)", {"ok": 0, "error": 0, "throttled": 0})
            counts[outcome] += 1
            if code:
                self.codes[code] = self.codes.get(code, 0) + 1
            entry = {"t": time.monotonic(), "wall": time.time(), "ak": ak, "action": action,
                     "status": status, "code": code}
            if fault:
                entry["fault"] = fault
            if target:
                entry.update(target)
            self.request_log.append(entry)
        line = "%s ak=%s action=%s status=%s code=%s%s" % (
            time.strftime("%Y-%m-%dT%H:%M:%S"), ak or "-", action or "-", status, code or "-",
            " fault=%s" % fault if fault else "")
        if self.log_file:
            self.log_file.write(line + "\n")
        elif not self.opts.quiet:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    # -- views for the control endpoints
    def state_view(self):
        def live(d):
            return {k: v for k, v in sorted(d.items()) if self.active(v)}
        out = {}
        with self.lock:
            for app_id, app in self.apps.items():
                rooms = {}
                for room_id, room in app["rooms"].items():
                    muted = {}
                    for uid, streams in sorted(room["muted"].items()):
                        alive = {k: v for k, v in streams.items() if self.active(v)}
                        if alive:
                            muted[uid] = alive
                    rooms[room_id] = {
                        "users": sorted(u for u, info in room["users"].items() if not info["invisible"]),
                        "invisible": sorted(u for u, info in room["users"].items() if info["invisible"]),
                        "muted": muted,
                        "banned_users": live(room["banned_users"]),
                        "banned_until": room["banned_until"] if self.active(room["banned_until"]) else None,
                        "limited_tokens": live(room["limited_tokens"]),
                    }
                out[app_id] = {"rooms": rooms, "user_bans": live(app["user_bans"]),
                               "ip_bans": live(app["ip_bans"])}
        return {"apps": out}

    def join(self, app_id, room_id, user_id, ip=None, invisible=False):
        with self.lock:
            app = self.apps.get(app_id)
            if app is None:
                return 404, {"joined": False, "reason": "unknown app"}
            room = app["rooms"].setdefault(room_id, new_room())
            if self.active(room["banned_until"]):
                return 403, {"joined": False, "reason": "room banned"}
            if self.active(room["banned_users"].get(user_id)) or self.active(app["user_bans"].get(user_id)):
                return 403, {"joined": False, "reason": "user banned"}
            if ip and self.active(app["ip_bans"].get(ip)):
                return 403, {"joined": False, "reason": "ip banned"}
            room["users"][user_id] = {"invisible": bool(invisible), "ip": ip}
            return 200, {"joined": True}


def throttled(emu):
    return ApiError(emu.throttle_status, "FlowLimitExceeded.QPSOverLimit",
                    "Request was denied due to request throttling.", 100018, outcome="throttled")


# ------------------------------------------------------------------ parameter helpers

def get_str(params, name, required=True, kind=None):
    """A string parameter. Absent (or null) -> MissingParameter if required; '' -> InvalidParameter."""
    value = params.get(name)
    if value is None:
        if required:
            raise ApiError(400, "MissingParameter", "%s is required" % name, 100002)
        return None
    if not isinstance(value, str):
        raise bad_param("%s must be a string" % name)
    if value == "":
        if required:
            raise bad_param("%s must not be empty" % name)
        return None
    if kind and not ID_RE.fullmatch(value):
        raise bad_param("%s is illegal" % name, "InvalidParameter.Illegal" + kind)
    return value


def get_app(emu, params):
    app_id = get_str(params, "AppId", kind="AppId")
    app = emu.apps.get(app_id)
    if app is None:
        raise bad_param("AppId %s does not exist" % app_id, "InvalidParameter.NotExistAppId")
    return app


def get_int(params, name, default=0):
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_param("%s must be a non-negative integer" % name)
    return value


def get_bool(params, name):
    value = params.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_param("%s must be a boolean" % name)
    return value


def ban_interval(params):
    """ForbiddenInterval of BanRoomUser/UpdateBanRoomUserRule: 1..9 -> 10, above 7 days -> 7 days."""
    seconds = get_int(params, "ForbiddenInterval")
    return 0 if seconds == 0 else min(max(seconds, 10), MAX_BAN_S)


def get_ip(params):
    ip = params.get("IP")
    if ip is None or ip == "":
        return None
    if not isinstance(ip, str):
        raise bad_param("IP must be a string")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise bad_param("IP is illegal") from None
    return ip


def message(version, text):
    # 2020-12-01 results use a lower-case key, 2023-11-01 ones an upper-case key.
    return {"message" if version == "2020-12-01" else "Message": text}


# ------------------------------------------------------------------ actions

def kick_user(emu, p, version):
    app = get_app(emu, p)
    room_id = get_str(p, "RoomId", kind="RoomID")
    user_id = get_str(p, "UserId", kind="UserID")
    room = app["rooms"].get(room_id)
    if room:
        room["users"].pop(user_id, None)
    return message(version, "success")


def dismiss_room(emu, p, version):
    app = get_app(emu, p)
    room = app["rooms"].get(get_str(p, "RoomId", kind="RoomID"))
    if room:
        room["users"].clear()
    return message(version, "success")


def kick_everywhere(app, user_id=None, ip=None):
    for room in app["rooms"].values():
        for uid, info in list(room["users"].items()):
            if uid == user_id or (ip is not None and info["ip"] == ip):
                del room["users"][uid]


def ban_room_user(emu, p, version):
    app = get_app(emu, p)
    room_id = get_str(p, "RoomId", required=False, kind="RoomID")
    user_id = get_str(p, "UserId", required=False, kind="UserID")
    ip = get_ip(p)
    interval = ban_interval(p)
    if not (room_id or user_id or ip):
        raise bad_param("at least one of RoomId, UserId, IP is required")
    # Scope precedence: room+user, room, user (app-wide), IP.
    if room_id:
        room = app["rooms"].setdefault(room_id, new_room())
        if user_id:
            repeat = emu.active(room["banned_users"].get(user_id))
            room["users"].pop(user_id, None)
            if interval and not repeat:
                room["banned_users"][user_id] = emu.expiry_in(interval)
            text = "User has been banned" if repeat else "success"
        else:
            repeat = emu.active(room["banned_until"])
            room["users"].clear()
            if interval and not repeat:
                room["banned_until"] = emu.expiry_in(interval)
            text = "Room has been banned" if repeat else "success"
    else:
        bans, key = (app["user_bans"], user_id) if user_id else (app["ip_bans"], ip)
        repeat = emu.active(bans.get(key))
        kick_everywhere(app, user_id=user_id, ip=None if user_id else ip)
        if interval and not repeat:
            bans[key] = emu.expiry_in(interval)
        text = "User has been banned" if repeat else "success"
    return message(version, text)


def update_ban_rule(emu, p, version):
    app = get_app(emu, p)
    room_id = get_str(p, "RoomId", required=False, kind="RoomID")
    user_id = get_str(p, "UserId", required=False, kind="UserID")
    ip = get_ip(p)
    interval = ban_interval(p)
    if room_id and not interval and room_id not in app["rooms"]:
        return message(version, "success")  # nothing to lift
    if room_id and user_id:
        bans, key = app["rooms"].setdefault(room_id, new_room())["banned_users"], user_id
    elif room_id:
        app["rooms"].setdefault(room_id, new_room())["banned_until"] = emu.expiry_in(interval) if interval else None
        return message(version, "success")
    elif user_id:
        bans, key = app["user_bans"], user_id
    elif ip:
        bans, key = app["ip_bans"], ip
    else:
        raise bad_param("at least one of RoomId, UserId is required")
    if interval:
        bans[key] = emu.expiry_in(interval)
    else:
        bans.pop(key, None)
    return message(version, "success")


def stream_target(emu, p):
    app = get_app(emu, p)
    room_id = get_str(p, "RoomId", kind="RoomID")
    user_id = get_str(p, "UserId", kind="UserID")
    return app["rooms"].setdefault(room_id, new_room()), user_id, get_bool(p, "Audio"), get_bool(p, "Video")


def ban_user_stream(emu, p, version):
    room, user_id, audio, video = stream_target(emu, p)
    interval = get_int(p, "ForbiddenInterval")
    if interval != 0 and not 60 <= interval <= 259200:
        raise bad_param("ForbiddenInterval must be 0 or within [60, 259200]")
    streams = room["muted"].setdefault(user_id, {})
    for name, wanted in (("audio", audio), ("video", video)):
        if wanted:
            streams[name] = emu.expiry_in(interval)
    return message(version, "success")


def unban_user_stream(emu, p, version):
    room, user_id, audio, video = stream_target(emu, p)
    streams = room["muted"].get(user_id, {})
    for name, wanted in (("audio", audio), ("video", video)):
        if wanted:
            streams.pop(name, None)
    return message(version, "success")


def limit_token_privilege(emu, p, version):
    app = get_app(emu, p)
    room_id = get_str(p, "RoomId", kind="RoomID")
    user_id = get_str(p, "UserId", kind="UserID")
    get_str(p, "Token")
    if p.get("ForbiddenInterval") is None:
        raise ApiError(400, "MissingParameter", "ForbiddenInterval is required", 100002)
    interval = get_int(p, "ForbiddenInterval")
    if interval == 0:
        raise bad_param("ForbiddenInterval must be positive")
    end = int(emu.now()) + min(max(interval, 60), 259200)
    app["rooms"].setdefault(room_id, new_room())["limited_tokens"][user_id] = end
    return {"Message": "Success", "EndTime": end}


def get_room_online_users(emu, p, version):
    app = get_app(emu, p)
    room = app["rooms"].get(get_str(p, "RoomId", kind="RoomID"))
    if not room or not room["users"]:
        return {"RoomExists": False}
    visible = sorted(u for u, info in room["users"].items() if not info["invisible"])
    invisible = sorted(u for u, info in room["users"].items() if info["invisible"])
    return {"RoomExists": True, "TotalUser": len(visible) + len(invisible),
            "TotalInvisibleUser": len(invisible), "VisibleUserList": visible, "InvisibleUserList": invisible}


# (Action, Version) -> (HTTP method, handler)
ACTIONS = {
    ("KickUser", "2020-12-01"): ("POST", kick_user),
    ("BanRoomUser", "2023-11-01"): ("POST", ban_room_user),
    ("BanRoomUser", "2020-12-01"): ("POST", ban_room_user),
    ("UpdateBanRoomUserRule", "2023-11-01"): ("POST", update_ban_rule),
    ("UpdateBanRoomUserRule", "2020-12-01"): ("POST", update_ban_rule),
    ("BanUserStream", "2023-11-01"): ("POST", ban_user_stream),
    ("UnbanUserStream", "2023-11-01"): ("POST", unban_user_stream),
    ("GetRoomOnlineUsers", "2023-11-01"): ("GET", get_room_online_users),
    ("GetRoomOnlineUsers", "2023-08-01"): ("GET", get_room_online_users),
    ("DismissRoom", "2020-12-01"): ("POST", dismiss_room),
    ("LimitTokenPrivilege", "2023-11-01"): ("POST", limit_token_privilege),
}


# ------------------------------------------------------------------ signature check

def authenticate(emu, req):
    """Check the signature of an API request; returns the AK or raises ApiError."""
    header = req.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "MissingAuthenticationToken", "Request is missing Authorization header", 100003)
    auth = volc_signer.parse_authorization(header.strip())
    if auth is None:
        raise ApiError(400, "InvalidAuthorization", "Authorization header is malformed")
    req.ak = auth["ak"]
    x_date = req.headers.get("X-Date")
    if x_date is None:
        raise ApiError(400, "MissingRequestInfo", "Request is missing X-Date header", 100004)
    if not XDATE_RE.fullmatch(x_date):
        raise ApiError(400, "InvalidTimestamp", "X-Date is malformed", 100006)
    try:
        signed_at = datetime.datetime(int(x_date[0:4]), int(x_date[4:6]), int(x_date[6:8]), int(x_date[9:11]),
                                      int(x_date[11:13]), int(x_date[13:15]), tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        raise ApiError(400, "InvalidTimestamp", "X-Date is malformed", 100006) from None
    if abs(signed_at - emu.now()) > MAX_SKEW_S:
        raise ApiError(400, "InvalidTimestamp", "X-Date is more than 15 minutes from the server time", 100006)
    cred = emu.credentials.get(auth["ak"])
    if cred is None:
        raise ApiError(401, "InvalidAccessKey", "The access key is invalid", 100009)
    if auth["service"] != "rtc":
        raise ApiError(404, "ServiceNotFound", "Service %s not found" % auth["service"], 100007)

    def mismatch(why):
        return ApiError(401, "SignatureDoesNotMatch", "The request signature does not match: " + why, 100010)

    names = auth["signed_headers"]
    if "host" not in names or "x-date" not in names:
        raise mismatch("host and x-date must be signed")
    if names != sorted(set(names)):
        raise mismatch("SignedHeaders must be sorted and unique")
    content_sha = req.headers.get("X-Content-Sha256")
    if content_sha is not None and content_sha != hashlib.sha256(req.body).hexdigest():
        raise mismatch("X-Content-Sha256 does not match the body")
    if auth["date"] != x_date[:8]:
        raise mismatch("credential scope date differs from X-Date")
    if auth["region"] != emu.opts.region:
        raise mismatch("region %s is not %s" % (auth["region"], emu.opts.region))
    try:
        expected, _ = volc_signer.verify_received(
            req.command, req.raw_path, req.raw_query, req.headers.get, names, req.body,
            cred["sk"], x_date, auth["date"], auth["region"], auth["service"])
    except KeyError as missing:
        raise mismatch("signed header %s is missing" % missing) from None
    if not volc_signer.signatures_equal(expected, auth["signature"]):
        raise mismatch("signature differs")
    token = cred.get("session_token")
    if token and ("x-security-token" not in names or req.headers.get("X-Security-Token") != token):
        raise ApiError(401, "InvalidSecretToken", "The security token is missing or invalid")
    return auth["ak"]


# ------------------------------------------------------------------ HTTP layer

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a client opening its pool of keep-alive connections at
    # once (16 for a bulk call) would see SYNs dropped and retried a second later.
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # Clients that give up (timeouts, closed sockets) are normal in fault tests.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self.emu.lock:
            self.emu.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid delayed-ACK stalls
    server_version = "rtc-emulator/1.0"

    def version_string(self):
        return self.server_version

    def parse_request(self):
        self.arrived = time.monotonic()  # the request line has just been read: the arrival time
        return super().parse_request()

    def log_message(self, fmt, *args):  # request logging is done by Emulator.record
        pass

    @property
    def emu(self):
        return self.server.emu

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def send_body(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, obj):
        self.send_body(status, json.dumps(obj).encode("utf-8"))

    def dispatch(self):
        self.raw_path, _, self.raw_query = self.path.partition("?")
        try:
            self.body = self.read_body()
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"error": "unreadable request body"})
            return
        if self.raw_path.startswith("/_emulator/"):
            self.control()
        else:
            self.api()

    # -- API requests
    def envelope(self, result=None, error=None):
        meta = {"RequestId": time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(9),
                "Action": self.action or "", "Version": self.version or "", "Service": "rtc",
                "Region": self.emu.opts.region}
        if error is not None:
            err = {"Code": error.code, "Message": error.message}
            if error.code_n is not None:
                err = {"CodeN": error.code_n, **err}
            meta["Error"] = err
        doc = {"ResponseMetadata": meta}
        if result is not None:
            doc["Result"] = result
        return doc

    def finish_api(self, status, doc, code, outcome, fault=None, extra_delay_ms=0, content_type=None):
        """Answer an API request after the configured latency. It is logged before the answer
        goes out, so a client that got the answer always finds it in stats and the request log."""
        delay = (self.emu.latency_ms + extra_delay_ms) / 1000.0
        if delay > 0:
            self.emu.stopping.wait(delay)
        self.emu.record(self.ak, self.action, status, code, outcome, fault, getattr(self, "target", None))
        if isinstance(doc, bytes):
            self.send_body(status, doc, content_type or "application/json")
        else:
            self.send_json(status, doc)

    def api(self):
        query = dict(volc_signer.received_query_pairs(self.raw_query)[::-1])  # first value wins
        self.action, self.version, self.ak = query.get("Action"), query.get("Version"), None
        emu = self.emu
        fault = emu.take_fault(self.action, transport=True)
        if fault:
            unverified = volc_signer.parse_authorization(self.headers.get("Authorization") or "")
            self.ak = unverified and unverified["ak"]  # for the log only
            return self.transport_fault(fault)
        extra_ms = 0
        try:
            authenticate(emu, self)
            fault = emu.take_fault(self.action, transport=False)
            if fault and fault.startswith("latency:"):
                extra_ms, fault = int(fault.split(":", 1)[1]), None
            if fault:
                return self.injected_fault(fault)
            if not self.action or not self.version:
                raise ApiError(400, "MissingParameter", "Action and Version are required", 100002)
            route = ACTIONS.get((self.action, self.version))
            if route is None or route[0] != self.command:
                raise ApiError(404, "InvalidActionOrVersion",
                               "Action %s with Version %s (%s) is not supported" % (
                                   self.action, self.version, self.command), 100008)
            emu.admit(self.ak, self.action, self.arrived)
            if self.command == "GET":
                params = query
            else:
                params = self.json_params()
            # Whom the request was about, for the request log (tests count actions per user).
            self.target = {k: params[k] for k in ("RoomId", "UserId") if isinstance(params.get(k), str)}
            with emu.lock:
                result = route[1](emu, params, self.version)
            self.finish_api(200, self.envelope(result=result), None, "ok", extra_delay_ms=extra_ms)
        except ApiError as err:
            self.finish_api(err.status, self.envelope(error=err), err.code, err.outcome, extra_delay_ms=extra_ms)
        except Exception:  # an emulator bug: answer like the real service would, and show it
            traceback.print_exc()
            err = ApiError(500, "InternalError", "emulator internal error", 100014)
            self.finish_api(500, self.envelope(error=err), err.code, "error")

    def json_params(self):
        if not self.body.strip():
            raise bad_param("request body is empty", "InvalidParameter.BodyIsEmpty")
        try:
            params = json.loads(self.body)
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise bad_param("request body is not a JSON object", "InvalidParameter.Unmarshal")
        return params

    def transport_fault(self, kind):
        self.close_connection = True
        self.emu.record(self.ak, self.action, 0 if kind == "drop" else 200, None, "error", kind)
        if kind == "reset_mid_body":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"Response')  # 10 of the 1000 promised bytes
            self.wfile.flush()

    def injected_fault(self, kind):
        emu = self.emu
        if kind == "hang":
            emu.record(self.ak, self.action, 0, None, "error", kind)
            emu.stopping.wait(30)  # never answered; the connection is closed afterwards
            self.close_connection = True
            return None
        if kind == "status500":
            err = ApiError(500, "InternalError", "Internal error, please retry", 100014)
            return self.finish_api(500, self.envelope(error=err), err.code, "error", kind)
        if kind == "internal_error_200":
            err = ApiError(200, "InternalError.GenerateTokenFailed", "Internal error")
            return self.finish_api(200, self.envelope(error=err), err.code, "error", kind)
        if kind == "throttle":
            err = throttled(emu)
            return self.finish_api(err.status, self.envelope(error=err), err.code, "throttled", kind)
        if kind == "html502":
            return self.finish_api(502, b"<html>Bad Gateway</html>", None, "error", kind, content_type="text/html")
        if kind == "malformed":
            return self.finish_api(200, b'{"ResponseMetadata": {', None, "error", kind)
        if kind == "huge":
            doc = self.envelope(result={"Message": "success", "Padding": ""})
            pad = 2 * 1024 * 1024 - len(json.dumps(doc).encode("utf-8"))
            doc["Result"]["Padding"] = "x" * pad
            return self.finish_api(200, doc, None, "ok", kind)
        raise AssertionError(kind)

    # -- control endpoints
    def control(self):
        emu, name = self.emu, self.raw_path[len("/_emulator/"):].rstrip("/")
        try:
            params = json.loads(self.body) if self.body.strip() else {}
        except ValueError:
            return self.send_json(400, {"error": "body is not JSON"})
        if not isinstance(params, dict):
            return self.send_json(400, {"error": "body must be a JSON object"})
        route = (self.command, name)
        if route == ("GET", "state"):
            return self.send_json(200, emu.state_view())
        if route == ("POST", "join"):
            fields = [params.get(k) for k in ("app_id", "room_id", "user_id")]
            if not all(isinstance(f, str) and ID_RE.fullmatch(f) for f in fields):
                return self.send_json(400, {"joined": False, "reason": "illegal id"})
            return self.send_json(*emu.join(*fields, ip=params.get("ip"), invisible=params.get("invisible")))
        if route == ("POST", "reset"):
            emu.reset()
            return self.send_json(200, {"reset": True})
        if route == ("POST", "config"):
            return self.configure(params)
        if route == ("POST", "faults"):
            return self.add_faults(params)
        if route == ("DELETE", "faults"):
            with emu.lock:
                emu.faults.clear()
            return self.send_json(200, {"faults": []})
        if route == ("GET", "faults"):
            with emu.lock:
                return self.send_json(200, {"faults": copy.deepcopy(emu.faults)})
        if route == ("GET", "stats"):
            with emu.lock:
                return self.send_json(200, {"connections": emu.connections, "requests": emu.requests,
                                            "by_action": copy.deepcopy(emu.by_action), "codes": dict(emu.codes)})
        if route == ("GET", "requests"):
            wanted = dict(parse_qsl(self.raw_query))
            with emu.lock:
                entries = [e for e in emu.request_log
                           if all(e.get(k) == wanted[k] for k in ("action", "ak") if k in wanted)]
            return self.send_json(200, {"requests": entries})
        if route == ("POST", "shutdown"):
            self.close_connection = True
            self.send_json(200, {"shutdown": True})
            self.wfile.flush()
            emu.stopping.set()
            return None
        return self.send_json(404, {"error": "unknown control endpoint %s %s" % route})

    def configure(self, params):
        emu = self.emu
        number = (int, float)
        try:
            with emu.lock:
                for action, limit in (params.get("qps") or {}).items():
                    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                        raise ValueError("qps limits must be non-negative integers")
                    if action in ("*", "default"):
                        emu.qps_default = limit
                    else:
                        emu.qps[action] = limit
                if "qps_enabled" in params:
                    emu.qps_enabled = bool(params["qps_enabled"])
                if "latency_ms" in params:
                    if not isinstance(params["latency_ms"], number) or params["latency_ms"] < 0:
                        raise ValueError("latency_ms must be a non-negative number")
                    emu.latency_ms = params["latency_ms"]
                if "throttle_status" in params:
                    if not isinstance(params["throttle_status"], int) or not 100 <= params["throttle_status"] <= 599:
                        raise ValueError("throttle_status must be an HTTP status")
                    emu.throttle_status = params["throttle_status"]
                if "clock_offset_s" in params:
                    if not isinstance(params["clock_offset_s"], number):
                        raise ValueError("clock_offset_s must be a number")
                    emu.clock_offset = float(params["clock_offset_s"])
                view = {"qps": dict(emu.qps, default=emu.qps_default), "qps_enabled": emu.qps_enabled,
                        "latency_ms": emu.latency_ms, "throttle_status": emu.throttle_status,
                        "clock_offset_s": emu.clock_offset}
        except (ValueError, AttributeError) as err:
            return self.send_json(400, {"error": str(err)})
        return self.send_json(200, view)

    def add_faults(self, params):
        faults = params.get("faults")
        if not isinstance(faults, list):
            return self.send_json(400, {"error": "faults must be a list"})
        parsed = []
        for f in faults:
            kind = f.get("kind") if isinstance(f, dict) else None
            count = f.get("count", 1) if isinstance(f, dict) else None
            valid_kind = kind in FAULT_KINDS or (isinstance(kind, str) and re.fullmatch(r"latency:\d+", kind))
            if not valid_kind or not isinstance(count, int) or isinstance(count, bool) or count < 1:
                return self.send_json(400, {"error": "bad fault %r" % (f,)})
            parsed.append({"action": f.get("action") or "*", "kind": kind, "count": count})
        with self.emu.lock:
            self.emu.faults.extend(parsed)
            return self.send_json(200, {"faults": copy.deepcopy(self.emu.faults)})


# ------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(description="Volcengine RTC OpenAPI emulator")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--seed", help="JSON file with credentials and apps")
    ap.add_argument("--region", default="cn-north-1")
    ap.add_argument("--exit-with-parent", action="store_true")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--throttle-status", type=int, default=429)
    ap.add_argument("--no-qps", action="store_true")
    ap.add_argument("--log", help="append request log lines to this file instead of stderr")
    ap.add_argument("--quiet", action="store_true", help="no request log on stderr")
    return ap.parse_args(argv)


def watch_parent(emu):
    parent = os.getppid()
    while not emu.stopping.wait(0.2):
        if os.getppid() != parent:
            os._exit(0)


def main(argv=None):
    opts = parse_args(argv)
    seed = {}
    if opts.seed:
        with open(opts.seed, encoding="utf-8") as fh:
            seed = json.load(fh)
    emu = Emulator(opts, seed)
    # Many handler threads (one per connection): switch among them every 0.5 ms instead of 5 ms, so a
    # request waits less for the interpreter between arriving and being handled.
    sys.setswitchinterval(0.0005)
    server = Server((opts.host, opts.port), Handler)
    server.emu = emu
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: emu.stopping.set())
    if opts.exit_with_parent:
        threading.Thread(target=watch_parent, args=(emu,), daemon=True).start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    print("rtc-emulator listening on http://%s:%d" % (opts.host, server.server_address[1]), flush=True)
    while not emu.stopping.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
