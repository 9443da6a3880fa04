/**
 * Socket.IO 4 with connection-state recovery, on one node: its documented limit (recovery does not work with the
 * Redis adapter). Changes come from PostgreSQL as ours do, through a trigger: it LISTENs on `bench_sio`, whose
 * payload is the row (`{ id, data }`), and emits `data` to the entity's room.
 */
import { createServer } from 'node:http'
import { Server } from 'socket.io'
import pg from 'pg'

const port = Number(process.env.PORT)
const httpServer = createServer()
const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  // the window: a client off for longer is not recovered
  connectionStateRecovery: { maxDisconnectionDuration: 120_000, skipMiddlewares: true }
})
io.on('connection', (socket) => {
  socket.on('subscribe', (entityId: string) => { void socket.join(entityId) })
})
const listener = new pg.Client({ connectionString: process.env.BENCH_DATABASE_URL })
await listener.connect()
listener.on('notification', (message) => {
  const { id, data } = JSON.parse(message.payload ?? '{}') as { id: string, data: unknown }
  io.to(id).emit('notification', data)
})
await listener.query('LISTEN bench_sio')
process.on('SIGTERM', () => { void listener.end().then(() => process.exit(0)) })
httpServer.listen(port, '127.0.0.1', () => process.send?.({ listening: port }))
