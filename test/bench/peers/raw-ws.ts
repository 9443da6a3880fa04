/**
 * The practical ceiling: a minimal ws server that receives each change from Redis and writes one pre-framed
 * message to every socket watching the entity (framed once, no per-socket work beyond the write).
 */
import * as ws from 'ws'
import { WebSocketServer, type WebSocket, type RawData } from 'ws'
import { Redis } from 'ioredis'

/** ws's frame builder (exported at run time, missing from its types) */
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } }
const port = Number(process.env.PORT)
const channel = process.env.BENCH_CHANNEL ?? 'bench:raw'
const watchers = new Map<string, Set<WebSocket>>()
const server = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 4096 })
server.on('connection', (socket) => {
  socket.once('message', (data: RawData) => {
    const id = data.toString()
    let set = watchers.get(id)
    if (set === undefined) watchers.set(id, (set = new Set()))
    set.add(socket)
    socket.on('close', () => set.delete(socket))
  })
})
const subscriber = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
await subscriber.subscribe(channel)
subscriber.on('message', (_channel: string, message: string) => {
  const { entityId, frame } = JSON.parse(message) as { entityId: string, frame: string }
  const sockets = watchers.get(entityId)
  if (sockets === undefined) return
  // frame once (header and payload in one buffer), write the same bytes to every socket: one write each
  const framed = Buffer.concat(Sender.frame(Buffer.from(frame), { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
  for (const socket of sockets) (socket as unknown as { _socket: { write(b: Buffer): void } })._socket.write(framed)
})
// the server may be listening already by now
if (server.address() !== null) process.send?.({ listening: port })
else server.on('listening', () => process.send?.({ listening: port }))
