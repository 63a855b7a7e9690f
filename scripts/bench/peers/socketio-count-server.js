// The seed's stack as a yardstick (issue #17): a minimal Node.js socket.io server that does per
// phone event what ws-count-server.js does per message: it counts the event's bytes for the
// connection and answers ("durable", N) with the connection's total, at once.
//
//   node socketio-count-server.js PORT    (socket.io from NODE_PATH; prints "bytes=N live=M" every second)
//
// Phones reach it as mobile-sim --protocol socketio at ws://HOST:PORT/socket.io/?EIO=4&transport=websocket:
// WebSocket only (no long-polling), no compression, socket.io's own pings (every 25 s) on.
'use strict';
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node socketio-count-server.js PORT');
  process.exit(2);
}
let bytes = 0;
const io = new Server({ transports: ['websocket'], perMessageDeflate: false, maxHttpBufferSize: 4096 });
io.on('connection', (socket) => {
  let total = 0;
  socket.on('b', (data) => {
    const n = typeof data === 'string' ? data.length : 0;
    total += n;
    bytes += n;
    socket.emit('durable', total);
  });
});
const http = require('http').createServer();
io.attach(http);
http.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
setInterval(() => console.log(`bytes=${bytes} live=${io.engine.clientsCount}`), 1000);
