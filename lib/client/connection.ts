/**
 * The client's one socket: opening it with a token, signing in in-band (the token never appears in a URL),
 * reconnecting with backoff, and the close-code policy: no reconnect after 4403, 1008 or 1009 (state `closed`), and
 * after 4401 only with a token that `getToken()` hands out afresh (state `unauthorized`).
 */
import { CloseCode, FINAL_CLOSE_CODES, retryHintOf } from '../protocol/wire.js'
import { Backoff } from './backoff.js'
import { Credentials } from './credentials.js'
import { Liveness, onPageWake } from './liveness.js'
import { AUTH_ID, parseServerFrame, type ClientMessage, type ServerFrame } from './frames.js'
import { ChangefeedClientError, ClientError } from './errors.js'
import type { ClientOptions, ConnectionState, StateChange, Token, WebSocketLike } from './types.js'

/** What the client hears of its connection. */
export interface ConnectionHooks {
  state (change: StateChange): void
  /** the socket opened (and the `auth` message is sent): subscribe; `reconnected`: not the first socket */
  opened (reconnected: boolean): void
  /** the socket closed: the server holds none of its subscriptions any more */
  closed (): void
  frame (frame: ServerFrame): void
}

/** WebSocket.OPEN */
const OPEN = 1
/** This side closes with a private-use code: 4401 and the like are the server's to send. */
const CLIENT_CLOSE = 4000
/** getToken() handed out the token the socket holds already: it is asked again after this long */
const SAME_TOKEN_RETRY_MS = 1000
/** a socket closed without a close frame: the code the client reads as for any lost connection */
const ABNORMAL = 1006

type SocketConstructor = new (url: string) => WebSocketLike

/**
 * The `WebSocket` option, else the runtime's own (browsers, Node 22+). Without either, the client fails here, at
 * construction, rather than when it first connects (inside a promise nobody awaits, which would end a Node process).
 */
function socketConstructor (option: SocketConstructor | undefined): SocketConstructor {
  const Socket = option ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket
  if (typeof Socket !== 'function') {
    throw new ChangefeedClientError(ClientError.noWebSocket, 'no global WebSocket (Node < 22): pass the `WebSocket` option, e.g. ws\'s')
  }
  return Socket
}

export class Connection {
  state: ConnectionState = 'idle'
  private ws: WebSocketLike | null = null
  /** a socket is being opened (the token is being fetched) */
  private opening = false
  /** gives up a socket that does not open in time */
  private connectTimer: ReturnType<typeof setTimeout> | undefined
  private destroyed = false
  private everOpened = false
  /** the token last sent on this socket */
  private sent: string | null = null
  private readonly backoff: Backoff
  private readonly credentials: Credentials
  private readonly liveness: Liveness
  private readonly stopWatchingPage: () => void
  private readonly Socket: SocketConstructor
  private readonly urls: readonly string[]
  /** the URL of the next socket: each reconnect takes another one, at random */
  private urlIndex: number
  private readonly random: () => number

  constructor (private readonly options: ClientOptions, private readonly hooks: ConnectionHooks) {
    this.Socket = socketConstructor(options.WebSocket)
    this.urls = typeof options.url === 'string' ? [options.url] : options.url
    this.random = options.random ?? Math.random
    this.urlIndex = Math.floor(this.random() * this.urls.length)
    this.backoff = new Backoff({ initialMs: 500, maxMs: 30_000, resetAfterMs: 10_000, ...options.backoff }, this.random)
    this.credentials = new Credentials(options.getToken, options.refreshBeforeExpiryMs ?? 30_000)
    this.liveness = new Liveness(options.pingIntervalMs ?? 25_000, options.pongTimeoutMs ?? 10_000,
      () => this.send({ type: 'ping' }), () => this.drop(CLIENT_CLOSE, 'no pong in time'))
    this.stopWatchingPage = onPageWake(() => this.wake())
  }

  /** Opens the socket (idempotent). */
  connect (): void {
    if (this.destroyed || this.ws !== null || this.opening || this.backoff.pending) return
    void this.open()
  }

  /** Sends a frame when the socket is open; false when it is not. */
  send (message: ClientMessage): boolean {
    if (!this.writable()) return false
    this.ws?.send(JSON.stringify(message))
    return true
  }

  /** Whether a frame sent now would go out. */
  writable (): boolean {
    return this.ws !== null && this.ws.readyState === OPEN && this.state === 'open'
  }

  /** Asks `getToken()` now and signs in with what it gives, unless it is the token refused last. */
  async reauthenticate (): Promise<void> {
    const token = await this.credentials.token()
    if (!this.credentials.isFresh(token)) return
    if (this.state !== 'open') this.connect()
    else if (token !== this.sent) this.authenticate(token)
  }

  /** `authenticated`: the token holds, whatever was refused before. */
  signedIn (): void {
    this.credentials.freshRequired = false
  }

  /** The `auth` message was refused: reconnect with a fresh token (or stop), unless anonymous will do. */
  tokenRefused (): void {
    this.credentials.refuse()
    if (this.options.anonymousFallback !== true) this.drop(CloseCode.unauthenticated, 'token refused')
  }

  /** Closes the socket and stops everything for good. */
  destroy (): void {
    this.destroyed = true
    clearTimeout(this.connectTimer)
    this.liveness.stop()
    this.backoff.cancel()
    this.credentials.forget()
    this.stopWatchingPage()
    const ws = this.ws
    this.ws = null
    if (ws !== null) {
      ws.onclose = null
      ws.close(CloseCode.normal, 'client destroyed')
    }
    this.setState('closed', 'destroyed')
  }

  private async open (): Promise<void> {
    // a retry is already 'reconnecting' (with its attempt and delay)
    if (this.backoff.attempt === 0) this.setState('connecting', 'connecting')
    let token: Token
    this.opening = true
    try {
      token = await this.credentials.token()
    } catch {
      this.opening = false
      return this.retry('getToken failed')
    }
    this.opening = false
    if (this.destroyed) return
    if (this.credentials.freshRequired && !this.credentials.isFresh(token)) {
      if (this.options.anonymousFallback !== true) return this.setState('unauthorized', 'no fresh token')
      token = null
    }
    this.credentials.current = token
    const ws = new this.Socket(this.urls[this.urlIndex % this.urls.length])
    this.ws = ws
    // the runtime's own limit on a connect can be minutes (a dropped connect waits out TCP's retries)
    this.connectTimer = setTimeout(() => { if (this.ws === ws) this.drop(ABNORMAL, 'connect timed out') }, this.options.connectTimeoutMs ?? 10_000)
    ws.onopen = () => {
      clearTimeout(this.connectTimer)
      if (this.ws !== ws) return
      if (token === null || token === undefined) this.credentials.freshRequired = false
      this.sent = null
      this.setState('open', 'connected')
      // signing in first: the server handles a socket's messages in order, so the subscribes that follow run signed in
      if (token !== null && token !== undefined) this.authenticate(token)
      const reconnected = this.everOpened
      this.everOpened = true
      this.hooks.opened(reconnected)
      this.liveness.start()
      this.backoff.connected()
    }
    ws.onmessage = (event) => this.receive(String(event.data))
    ws.onerror = () => {}
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      this.ws = null
      this.closed(event.code, event.reason)
    }
  }

  private receive (text: string): void {
    this.liveness.heard()
    const frame = parseServerFrame(text)
    if (frame !== null) this.hooks.frame(frame)
  }

  private authenticate (token: string): void {
    this.sent = token
    this.send({ type: 'auth', id: AUTH_ID, data: { token } })
    this.credentials.refreshBeforeExpiry(token, () => { void this.refresh() })
  }

  private async refresh (): Promise<void> {
    try {
      const token = await this.credentials.token()
      if (token === null || token === undefined || this.state !== 'open') return
      // a token provider may hand out its cached token until shortly before it expires: sent again, it would change
      // nothing, and the server allows a socket few auth messages (limits.authMessagesPerMinute)
      if (token === this.sent) return this.credentials.refreshIn(SAME_TOKEN_RETRY_MS, () => { void this.refresh() })
      this.authenticate(token)
    } catch {
      // the server closes with 4401 at expiry; the reconnect asks again
    }
  }

  /** Closes the socket from this side and goes on as if the server had closed it with `code`. */
  private drop (code: number, reason: string): void {
    const ws = this.ws
    if (ws === null) return
    this.ws = null
    ws.onclose = null
    ws.close(CLIENT_CLOSE, reason)
    this.closed(code, reason)
  }

  /** The close-code policy. */
  private closed (code: number, reason: string): void {
    clearTimeout(this.connectTimer)
    this.liveness.stop()
    this.credentials.stopRefresh()
    this.backoff.disconnected()
    this.hooks.closed()
    if (this.destroyed) return
    if (code === CloseCode.unauthenticated) {
      // reconnect only with a token that getToken() hands out afresh; never with the one just refused
      this.credentials.refuse()
      if (!this.credentials.enabled || this.credentials.freshRequired) return this.setState('unauthorized', reason || 'unauthenticated', code)
      this.credentials.freshRequired = true
    } else if (FINAL_CLOSE_CODES.has(code)) {
      return this.setState('closed', reason || 'refused', code)
    }
    // another instance may be up where this one is not (a deploy drains this one: 1012 says when to come back);
    // one at random, so a rolling restart in the URLs' order does not move every client along to the last one
    this.urlIndex += 1 + Math.floor(this.random() * Math.max(0, this.urls.length - 1))
    this.retry(reason || 'connection closed', code, code === CloseCode.serviceRestart ? retryHintOf(reason) ?? undefined : undefined)
  }

  private retry (reason: string, code?: number, hintMs?: number): void {
    if (this.destroyed) return
    const delay = this.backoff.schedule(() => { void this.open() }, hintMs)
    this.setState('reconnecting', reason, code, delay)
  }

  /** The page became visible, came online, or was restored: check now instead of waiting. */
  private wake (): void {
    if (this.destroyed || this.state === 'unauthorized' || this.state === 'closed') return
    if (this.state === 'open') this.liveness.check()
    else this.backoff.hurry()
  }

  private setState (to: ConnectionState, reason: string, code?: number, nextRetryMs?: number): void {
    const from = this.state
    this.state = to
    const change: StateChange = { from, to, reason, attempt: this.backoff.attempt }
    if (code !== undefined) change.code = code
    if (nextRetryMs !== undefined) change.nextRetryMs = nextRetryMs
    this.hooks.state(change)
  }
}
