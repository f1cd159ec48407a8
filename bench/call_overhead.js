// Per-call cost of a KickUser call made with the official Node SDK (@volcengine/openapi), in the
// client process, against bench/instant_server.js.
//
//   node bench/call_overhead.js http://127.0.0.1:PORT [calls] [warmup]      (defaults: 20000, 2000)
//
// The call goes through the SDK's public path: a Service for "rtc", an API made with
// createJSONAPI("KickUser", {Version: "2020-12-01"}) (POST, JSON body, Action and Version in the
// query, signed by the SDK's Signer, sent with axios), awaited one at a time like the Lua loop.
// The SDK passes no agent to axios, so requests use Node's http.globalAgent, which keeps
// connections alive by default since Node 19; the server's connection count shows it.
//
// CPU time is process.cpuUsage() (user + system of the whole process: the main thread, libuv and
// V8's helper threads) over the timed calls, divided by their number; wall time is
// process.hrtime. Every call must answer Result.message == "success"; the first failure aborts.
"use strict";

const path = require("path");
const http = require("http");

const sdkDir = path.join(__dirname, "node_modules/@volcengine/openapi");
const Service = require(path.join(sdkDir, "lib/base/service.js")).default;
const sdkVersion = require(path.join(sdkDir, "package.json")).version;
const axiosVersion = require(path.join(__dirname, "node_modules/axios/package.json")).version;

const endpoint = process.argv[2];
const calls = Number(process.argv[3]) || 20000;
const warmup = Number(process.argv[4]) || 2000;
if (!endpoint) {
  process.stderr.write("usage: node bench/call_overhead.js http://127.0.0.1:PORT [calls] [warmup]\n");
  process.exit(2);
}
const url = new URL(endpoint);

const service = new Service({
  host: url.host, // 127.0.0.1:PORT
  protocol: url.protocol, // "http:"
  region: "cn-north-1",
  serviceName: "rtc",
  accessKeyId: "AKLTrtcadminBenchKey01",
  secretKey: "YmVuY2htYXJrLXNlY3JldC1rZXk=",
});
const kickUser = service.createJSONAPI("KickUser", { Version: "2020-12-01" });
const params = { AppId: "661e2ebb5ffd4b0e8d3f6b1d", RoomId: "room1", UserId: "user1" };

async function run(n) {
  for (let i = 0; i < n; i++) {
    const body = await kickUser(params);
    if (!body || !body.Result || body.Result.message !== "success") {
      throw new Error(`call ${i} failed: ${JSON.stringify(body)}`);
    }
  }
}

async function main() {
  await run(warmup);
  if (global.gc) global.gc();
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await run(calls);
  const t1 = process.hrtime.bigint();
  const c = process.cpuUsage(c0);
  console.log(`node_version ${process.version}`);
  console.log(`sdk_version ${sdkVersion}`);
  console.log(`axios_version ${axiosVersion}`);
  console.log(`global_agent_keep_alive ${Boolean(http.globalAgent.keepAlive)}`);
  console.log(`calls ${calls}`);
  console.log(`warmup ${warmup}`);
  console.log(`node_cpu_us_per_call ${((c.user + c.system) / calls).toFixed(2)}`);
  console.log(`node_user_us_per_call ${(c.user / calls).toFixed(2)}`);
  console.log(`node_sys_us_per_call ${(c.system / calls).toFixed(2)}`);
  console.log(`node_wall_us_per_call ${(Number(t1 - t0) / 1000 / calls).toFixed(2)}`);
}

main().catch((e) => {
  process.stderr.write(`call_overhead.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
