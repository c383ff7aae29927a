// Runs a Node server script bound to 127.0.0.1 only, for bench/server_latency.py.
//
//     node loopback.mjs SCRIPT [ARGS...]
//
// Portkey's gateway (build/start-server.js) listens on a port it takes from --port=N
// but on every interface: it has no option for the address. This wrapper makes any
// `listen(port)` that names no host listen on 127.0.0.1, then runs SCRIPT with ARGS.
import net from "node:net";
import path from "node:path";
import { pathToFileURL } from "node:url";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};

const script = process.argv[2];
if (!script) {
  console.error("usage: node loopback.mjs SCRIPT [ARGS...]");
  process.exit(2);
}
process.argv.splice(2, 1); // the script sees its own arguments only
await import(pathToFileURL(path.resolve(script)).href);
