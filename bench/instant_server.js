// An HTTP/1.1 keep-alive server that answers every request at once with one fixed 200 JSON body.
// It checks nothing (no signature, no parameters): it only stands in for a service that costs
// nothing, so the benchmarks see the client's own overhead.
//
//   node bench/instant_server.js [port]        (default 0: pick a free port)
//
// Prints exactly one line to stdout once listening: "instant-server listening on http://127.0.0.1:PORT".
// On SIGTERM or SIGINT it prints "instant-server requests=N connections=M" to stderr and exits 0, so
// a benchmark can show that its client kept one connection alive.
"use strict";

const http = require("http");

const BODY = Buffer.from(
  '{"ResponseMetadata":{"RequestId":"r","Action":"KickUser","Version":"2020-12-01"},"Result":{"message":"success"}}',
);
const HEADERS = { "Content-Type": "application/json", "Content-Length": String(BODY.length) };

let requests = 0;
let connections = 0;

const server = http.createServer((req, res) => {
  requests++;
  // Drain the body, then answer; nothing is parsed.
  req.on("data", () => {});
  req.on("end", () => {
    res.writeHead(200, HEADERS);
    res.end(BODY);
  });
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.on("connection", (sock) => {
  connections++;
  sock.setNoDelay(true);
});

function stop() {
  process.stderr.write(`instant-server requests=${requests} connections=${connections}\n`);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(Number(process.argv[2]) || 0, "127.0.0.1", () => {
  process.stdout.write(`instant-server listening on http://127.0.0.1:${server.address().port}\n`);
});
