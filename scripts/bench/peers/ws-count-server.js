// The yardstick for the host gateway's CPU per phone byte (scripts/bench/gateway-cost.sh): a
// minimal Node.js WebSocket server (the `ws` package) that does per phone message what the
// gateway does, minus the trunk: it reads the message, counts its bytes for the connection, and
// answers {"durable":N} with the connection's total (at once: nothing to wait for here).
//
//   node ws-count-server.js PORT          (ws from NODE_PATH; prints "bytes=N live=M" every second)
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ws-count-server.js PORT');
  process.exit(2);
}
let bytes = 0;
// Same limits as the gateway: /ws only, messages up to 4 KiB, no compression.
const server = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws', maxPayload: 4096, perMessageDeflate: false });
server.on('connection', (ws) => {
  let total = 0;
  ws.on('message', (data) => {
    total += data.length;
    bytes += data.length;
    ws.send(JSON.stringify({ durable: total }));
  });
  ws.on('error', () => {});
});
server.on('listening', () => console.log(`listening ${port}`));
setInterval(() => console.log(`bytes=${bytes} live=${server.clients.size}`), 1000);
