/**
 * A WebSocket test client that queues what arrives, so a test can wait for the message it expects. Every frame the
 * server sends is checked against the protocol's schema (lib/protocol/messages.ts): one that does not match fails
 * the test that received it.
 */
import WebSocket from 'ws'
import { ServerMessageValidator } from '../../lib/protocol/index.js'

export interface Frame { type: string, id?: string | number, data?: any }

export class TestClient {
  readonly messages: Frame[] = []
  readonly raw: string[] = []
  readonly closed: Promise<{ code: number, reason: string }>
  private wake: (() => void) | null = null

  private constructor (readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const text = data.toString()
      this.raw.push(text)
      const message: unknown = JSON.parse(text)
      if (!ServerMessageValidator.Check(message)) throw new Error(`the server sent a frame outside the protocol: ${text.slice(0, 300)}`)
      this.messages.push(message as Frame)
      this.wake?.()
    })
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => { resolve({ code, reason: reason.toString() }); this.wake?.() }))
  }

  /** A socket already open (an injected one: app.injectWS). */
  static adopt (ws: WebSocket): TestClient {
    return new TestClient(ws)
  }

  static async open (url: string, options?: WebSocket.ClientOptions): Promise<TestClient> {
    const ws = new WebSocket(url, options)
    const client = new TestClient(ws)
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve())
      ws.once('error', reject)
    })
    return client
  }

  send (message: Frame | string): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** The first queued message matching `match` (removed from the queue); rejects after `timeoutMs`. */
  async next (match: (m: Frame) => boolean = () => true, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const i = this.messages.findIndex(match)
      if (i >= 0) return this.messages.splice(i, 1)[0]
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no matching message within ${timeoutMs} ms; queued: ${JSON.stringify(this.messages).slice(0, 500)}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.wake = () => { clearTimeout(timer); this.wake = null; resolve() }
      })
    }
  }

  /** Subscribes and waits for the reply (subscribed or subscription_error). */
  async subscribe (entityType: string, entityId: string, id: string | number = `${entityType}:${entityId}`): Promise<Frame> {
    this.send({ type: 'subscribe', id, data: { entityType, entityId } })
    return await this.next((m) => m.id === id && (m.type === 'subscribed' || m.type === 'subscription_error'))
  }

  /** Waits `ms` and returns the queued messages matching `match` (without removing them). */
  async collect (ms: number, match: (m: Frame) => boolean = () => true): Promise<Frame[]> {
    await new Promise((resolve) => setTimeout(resolve, ms))
    return this.messages.filter(match)
  }

  close (): void {
    this.ws.close()
  }
}

export const isNotification = (entityType: string, entityId: string) => (m: Frame): boolean =>
  m.type === 'notification' && m.data.entityType === entityType && m.data.entityId === entityId
