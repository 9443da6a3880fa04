/**
 * The token: asked of `getToken()` one call at a time, refreshed before it expires, and remembered when the server
 * refuses it, so that a refused token is never offered again (no blind reconnect after 4401).
 */
import type { ClientOptions, Token } from './types.js'

/** The token's `exp` (epoch ms), or null when it is not a JWT with one. Not verified: only the server can. */
function tokenExpiry (token: string): number | null {
  try {
    const part = token.split('.')[1]
    const json = typeof atob === 'function'
      ? atob(part.replace(/-/g, '+').replace(/_/g, '/'))
      : (globalThis as unknown as { Buffer: { from(s: string, e: string): { toString(): string } } }).Buffer.from(part, 'base64url').toString()
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : null
  } catch {
    return null
  }
}

export class Credentials {
  /** the token the current connection signed in with (null: anonymous) */
  current: Token = null
  /**
   * After a 4401 close: connect again only with a token `getToken()` hands out afresh. Cleared by a connection
   * that needs none, and by the server's `authenticated`.
   */
  freshRequired = false
  /** the token the server refused last: never sent again */
  private refused: Token = null
  private pending: Promise<Token> | null = null
  private refreshTimer: ReturnType<typeof setTimeout> | undefined

  constructor (private readonly getToken: ClientOptions['getToken'], private readonly refreshBeforeExpiryMs: number) {}

  /** There is a way to get a token (without one, 4401 is final). */
  get enabled (): boolean {
    return this.getToken !== undefined
  }

  /** One token request at a time: concurrent callers share it. */
  async token (): Promise<Token> {
    if (this.getToken === undefined) return null
    this.pending ??= Promise.resolve(this.getToken()).finally(() => { this.pending = null })
    return await this.pending
  }

  /** A token, and not the one refused last. */
  isFresh (token: Token): token is string {
    return token !== null && token !== undefined && token !== this.refused
  }

  /** The server refused the current token (a 4401 close, or an `error` reply to the `auth` message). */
  refuse (): void {
    this.refused = this.current
  }

  /** Calls `refresh` `refreshBeforeExpiryMs` before `token` expires (when it says when). */
  refreshBeforeExpiry (token: string, refresh: () => void): void {
    this.stopRefresh()
    const expiresAt = tokenExpiry(token)
    if (expiresAt === null) return
    const wait = Math.max(0, expiresAt - Date.now() - this.refreshBeforeExpiryMs)
    // setTimeout fires at once for delays beyond 2^31-1 ms
    this.refreshIn(Math.min(wait, 2 ** 31 - 1), refresh)
  }

  /** Calls `refresh` in `ms`. */
  refreshIn (ms: number, refresh: () => void): void {
    this.stopRefresh()
    this.refreshTimer = setTimeout(refresh, ms)
  }

  stopRefresh (): void {
    clearTimeout(this.refreshTimer)
    this.refreshTimer = undefined
  }

  /** The client is destroyed: a token request under way is no longer shared, and no token is kept. */
  forget (): void {
    this.stopRefresh()
    this.pending = null
    this.current = null
  }
}
