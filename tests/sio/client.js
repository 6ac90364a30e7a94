// A stock socket.io-client v4, driven by the integration tests over
// stdin/stdout, one JSON object a line.
//
// In:  {"op":"connect","url":..,"token":..,"transports":[..]?,"reconnection":bool?}
//      {"op":"emit","id":n,"event":..,"args":[..],"ack":bool}
//        an argument {"$binary": "<base64>"} anywhere is sent as a Buffer
//        (a binary attachment)
//      {"op":"disconnect"}
// Out: {"kind":"connect","transport":..}  {"kind":"upgrade","transport":..}
//      {"kind":"connect_error","message":..,"data":..}
//      {"kind":"disconnect","reason":..}
//      {"kind":"event","event":..,"args":[..]}
//      {"kind":"ack","id":n,"err":..,"args":[..]}
//      {"kind":"sent","id":n}  (an emit without ack was handed to the socket)
"use strict";

const { io } = require("socket.io-client");
const readline = require("readline");

let socket = null;

function out(o) {
  process.stdout.write(JSON.stringify(o) + "\n");
}

function revive(v) {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === "object") {
    if (typeof v.$binary === "string") return Buffer.from(v.$binary, "base64");
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = revive(x);
    return o;
  }
  return v;
}

function connect(c) {
  const opts = { auth: { token: c.token }, reconnection: c.reconnection !== false, reconnectionDelay: 200, reconnectionDelayMax: 500 };
  if (c.transports) opts.transports = c.transports;
  socket = io(c.url, opts);
  socket.io.on("open", () => {
    socket.io.engine.once("upgrade", (t) => out({ kind: "upgrade", transport: t.name }));
  });
  socket.on("connect", () => out({ kind: "connect", transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (e) => out({ kind: "connect_error", message: e.message, data: e.data || null }));
  socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
  socket.onAny((event, ...args) => out({ kind: "event", event, args }));
}

function emit(c) {
  const args = revive(c.args || []);
  if (c.ack) {
    socket.timeout(c.timeout || 10000).emit(c.event, ...args, (err, ...res) => {
      out({ kind: "ack", id: c.id, err: err ? err.message : null, args: res });
    });
  } else {
    socket.emit(c.event, ...args);
    out({ kind: "sent", id: c.id });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const c = JSON.parse(line);
  switch (c.op) {
    case "connect":
      connect(c);
      break;
    case "emit":
      emit(c);
      break;
    case "disconnect":
      if (socket) socket.disconnect();
      break;
    default:
      out({ kind: "bad_op", op: c.op });
  }
});
rl.on("close", () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
