/**
 * A WebSocket server the test scripts: it speaks no protocol by itself, records every frame each socket sends, and
 * answers only what the test tells it to. For SDK tests of frames the real server does not send yet, or of replies
 * whose timing the test must choose.
 */
import { WebSocketServer, type WebSocket } from 'ws'
import type { AddressInfo } from 'node:net'
import { until } from './wait.js'

export interface Frame { type: string, id?: string, data?: Record<string, unknown> }

export class ScriptedSocket {
  readonly received: Frame[] = []
  private read = 0
  constructor (readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Frame
      // pings are the client's liveness, answered here so that no test need think of them
      if (frame.type === 'ping') ws.send('{"type":"pong"}')
      else this.received.push(frame)
    })
  }

  /** The next frame not read yet (waits for it). */
  async next (ms = 5000): Promise<Frame> {
    if (!await until(() => this.received.length > this.read, ms, async () => await new Promise((resolve) => setTimeout(resolve, 5)))) {
      throw new Error(`no frame after ${JSON.stringify(this.received.slice(0, this.read).map((f) => f.type))}`)
    }
    return this.received[this.read++]
  }

  send (frame: unknown): void {
    this.ws.send(JSON.stringify(frame))
  }

  close (code = 1001): void {
    this.ws.close(code)
  }
}

export class ScriptedServer {
  readonly sockets: ScriptedSocket[] = []
  private constructor (private readonly wss: WebSocketServer, readonly url: string) {
    wss.on('connection', (ws) => this.sockets.push(new ScriptedSocket(ws)))
  }

  static async start (t: { teardown (fn: () => unknown): void }): Promise<ScriptedServer> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
    await new Promise((resolve) => wss.once('listening', resolve))
    const server = new ScriptedServer(wss, `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/ws`)
    t.teardown(async () => {
      for (const client of wss.clients) client.terminate()
      await new Promise((resolve) => wss.close(resolve))
    })
    return server
  }

  /** The n-th socket a client opened (waits for it). */
  async socket (n = 0): Promise<ScriptedSocket> {
    if (!await until(() => this.sockets.length > n)) throw new Error(`no socket #${n}`)
    return this.sockets[n]
  }
}
