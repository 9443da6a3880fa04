/**
 * Noticing a dead link from this side: a socket can stay "open" for minutes after the network went away (a laptop
 * lid closed, a mobile network switched). A ping every interval, and no frame back in time means the link is dead;
 * a page that becomes visible, comes back online or is restored from the back/forward cache checks at once.
 */

export class Liveness {
  private pingTimer: ReturnType<typeof setInterval> | undefined
  private pongTimer: ReturnType<typeof setTimeout> | undefined

  /**
   * `ping` sends a ping and says whether it could (false: not connected, nothing to wait for); `dead` is called
   * when no frame arrived within `timeoutMs` of a ping.
   */
  constructor (
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
    private readonly ping: () => boolean,
    private readonly dead: () => void
  ) {}

  /** The socket opened: ping every interval. */
  start (): void {
    this.stop()
    this.pingTimer = setInterval(() => this.check(), this.intervalMs)
  }

  /** Pings now, unless a ping already awaits its answer. */
  check (): void {
    if (this.pongTimer !== undefined || !this.ping()) return
    this.pongTimer = setTimeout(() => {
      this.pongTimer = undefined
      this.dead()
    }, this.timeoutMs)
  }

  /** A frame arrived: any frame proves the link, not only the pong. */
  heard (): void {
    clearTimeout(this.pongTimer)
    this.pongTimer = undefined
  }

  stop (): void {
    clearInterval(this.pingTimer)
    this.pingTimer = undefined
    this.heard()
  }
}

/** What the SDK uses of `window` and `document`, so that it compiles (and runs, doing nothing) without a DOM. */
interface PageEvents {
  addEventListener?: (type: string, listener: () => void) => void
  removeEventListener?: (type: string, listener: () => void) => void
  document?: { visibilityState?: string, addEventListener(type: string, listener: () => void): void, removeEventListener(type: string, listener: () => void): void }
}

/**
 * Calls `wake` when the page becomes visible, comes back online, or is restored from the back/forward cache.
 * Returns the function that stops listening. Outside a browser it does nothing.
 */
export function onPageWake (wake: () => void): () => void {
  const page = globalThis as unknown as PageEvents
  if (typeof page.addEventListener !== 'function') return () => {}
  const listener = (): void => { if (page.document?.visibilityState !== 'hidden') wake() }
  page.addEventListener('online', listener)
  page.addEventListener('pageshow', listener)
  page.document?.addEventListener('visibilitychange', listener)
  return () => {
    page.removeEventListener?.('online', listener)
    page.removeEventListener?.('pageshow', listener)
    page.document?.removeEventListener('visibilitychange', listener)
  }
}
