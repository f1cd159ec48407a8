// The official Node SDK's signer (@volcengine/openapi, lib/base/sign.js) on the golden vector
// rtc_kickuser_post_json: same method, path, query, headers, body, keys and X-Date.
//
//   node bench/sign_bench.js [iterations] [runs]      (defaults: 5000, 5)
//
// Each iteration does what Service.fetchOpenAPI does for one call: a new Signer over a new request
// object, then addAuthorization(). Reported: the median over the runs of wall ns/op (and of CPU
// ns/op from process.cpuUsage()). Before timing, the SDK's Authorization is checked against an
// HMAC-SHA256 computed here with node:crypto from the spec's formulas; a mismatch aborts the run.
//
// Note: the Node signer never signs Content-Type (it is on its "unsignable" list) and signs every
// other header it is given, so for this request it signs accept;host;x-content-sha256;x-date where
// the golden vector (Python SDK) signs content-type;host;x-content-sha256;x-date. The hashing work
// is the same size.
"use strict";

const path = require("path");
const crypto = require("crypto");

const Signer = require(path.join(__dirname, "node_modules/@volcengine/openapi/lib/base/sign.js")).default;
const sdkVersion = require(path.join(__dirname, "node_modules/@volcengine/openapi/package.json")).version;

const iterations = Number(process.argv[2]) || 5000;
const runs = Number(process.argv[3]) || 5;

const AK = "AKLTYWViMTVmZGYzM2E0NDI5Mzk2MDZjNjFmMjc2MjRjMzg";
const SK = "WkRZeE1EQmxPVGhsWWpWak5HVmtNbUUxTXpZeU9UVXlOMlE1TmpZeVlqTQ==";
const BODY = '{"AppId": "661e2ebb5ffd4b0e8d3f6b1d", "RoomId": "room1", "UserId": "user1"}';
const DATE = new Date(Date.UTC(2024, 5, 19, 7, 13, 6)); // 20240619T071306Z
const credentials = { accessKeyId: AK, secretKey: SK };

function makeRequest() {
  return {
    region: "cn-north-1",
    method: "POST",
    pathname: "/",
    params: { Action: "KickUser", Version: "2020-12-01" },
    headers: {
      Accept: "application/json",
      Host: "rtc.volcengineapi.com",
      "User-Agent": "volc-sdk-python/v1.0.228",
      "Content-Type": "application/json",
    },
    body: BODY,
  };
}

function signOnce() {
  const req = makeRequest();
  new Signer(req, "rtc").addAuthorization(credentials, DATE);
  return req.headers;
}

// Independent check of one signature, straight from the spec's formulas.
function check() {
  const h = signOnce();
  const sha = (s) => crypto.createHash("sha256").update(s).digest("hex");
  const hmac = (k, s) => crypto.createHmac("sha256", k).update(s).digest();
  const bodyHash = sha(BODY);
  if (h["X-Content-Sha256"] !== "09aed3e0ffb186feb9d62d4dc604580113e6c497ed4bcf85088f11568ad584f8") {
    throw new Error("X-Content-Sha256 differs from the golden vector");
  }
  const m = /^HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/cn-north-1\/rtc\/request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$/.exec(
    h.Authorization,
  );
  if (!m || m[1] !== AK || m[2] !== "20240619" || h["X-Date"] !== "20240619T071306Z") {
    throw new Error("unexpected Authorization: " + h.Authorization);
  }
  const signed = m[3].split(";");
  const byLower = {};
  for (const k of Object.keys(h)) byLower[k.toLowerCase()] = String(h[k]);
  const creq = [
    "POST",
    "/",
    "Action=KickUser&Version=2020-12-01",
    signed.map((k) => `${k}:${byLower[k]}`).join("\n") + "\n",
    m[3],
    bodyHash,
  ].join("\n");
  const sts = ["HMAC-SHA256", "20240619T071306Z", "20240619/cn-north-1/rtc/request", sha(creq)].join("\n");
  const key = hmac(hmac(hmac(hmac(SK, "20240619"), "cn-north-1"), "rtc"), "request");
  if (hmac(key, sts).toString("hex") !== m[4]) throw new Error("SDK signature does not verify");
  return m[3];
}

function median(a) {
  const s = [...a].sort((x, y) => x - y);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function main() {
  const signedHeaders = check();
  let sink = 0;
  for (let i = 0; i < Math.max(2000, iterations / 4); i++) sink += signOnce().Authorization.length; // warm-up (JIT)
  const wall = [];
  const cpu = [];
  for (let r = 0; r < runs; r++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) sink += signOnce().Authorization.length;
    const t1 = process.hrtime.bigint();
    const c = process.cpuUsage(c0);
    wall.push(Number(t1 - t0) / iterations);
    cpu.push(((c.user + c.system) * 1000) / iterations);
  }
  if (sink === 0) throw new Error("unreachable");
  const ns = median(wall);
  console.log(`node_version ${process.version}`);
  console.log(`sdk_version ${sdkVersion}`);
  console.log(`node_signed_headers ${signedHeaders}`);
  console.log(`iterations ${iterations}`);
  console.log(`runs ${runs}`);
  console.log(`node_sign_ns ${ns.toFixed(1)}`);
  console.log(`node_sign_cpu_ns ${median(cpu).toFixed(1)}`);
  console.log(`node_sign_ops_per_s ${(1e9 / ns).toFixed(0)}`);
}

main();
