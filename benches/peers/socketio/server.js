// The socket.io 4.x peer of the comparison (benches/, `tidings-bench compare`).
// Listens on 127.0.0.1 (port from argv[2], 0 = any free one) and prints
// `listening on http://127.0.0.1:PORT` as its first stdout line.
// Events, the same in benches/peers/socketioxide:
//   "join" (room, ack)        joins the room, acks "ok"
//   "pub"  (room, data, ack)  emits "msg" with data to the room (encoded once for all), acks "ok"
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 0);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("pub", (room, data, ack) => {
    io.to(room).emit("msg", data);
    if (typeof ack === "function") ack("ok");
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${httpServer.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
