/** What a team would build instead: Socket.IO 4 with the Redis adapter, a room per entity, emit per change. */
import { createServer } from 'node:http'
import { Server } from 'socket.io'
import { createAdapter } from '@socket.io/redis-adapter'
import { Redis } from 'ioredis'

const port = Number(process.env.PORT)
const channel = process.env.BENCH_CHANNEL ?? 'bench:socketio'
const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const pub = new Redis(url)
const sub = pub.duplicate()
const httpServer = createServer()
const io = new Server(httpServer, { transports: ['websocket'], adapter: createAdapter(pub, sub, { key: `bench-${process.pid}` }), perMessageDeflate: false })
io.on('connection', (socket) => {
  socket.on('subscribe', (entityId: string) => { void socket.join(entityId) })
})
const changes = new Redis(url)
await changes.subscribe(channel)
changes.on('message', (_channel: string, message: string) => {
  const { entityId, payload } = JSON.parse(message) as { entityId: string, payload: unknown }
  io.to(entityId).emit('notification', payload)
})
httpServer.listen(port, '127.0.0.1', () => process.send?.({ listening: port }))
