/** Per-connection and per-server limits (DESIGN.md §6). */

/** A token bucket: `capacity` at once, refilled at `perSecond`. Lazily refilled: no timers. */
export class TokenBucket {
  private tokens: number
  private last = Date.now()

  constructor (private readonly capacity: number, private readonly perSecond: number) {
    this.tokens = capacity
  }

  take (): boolean {
    const now = Date.now()
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) / 1000) * this.perSecond)
    this.last = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}

/** Counts open connections per key (IP, user) and refuses past a maximum. */
export class ConnectionCounter {
  private readonly counts = new Map<string, number>()

  constructor (private readonly max: number) {}

  /** Counts one more for `key` and returns true, or returns false when `key` is at the maximum. */
  acquire (key: string): boolean {
    const n = this.counts.get(key) ?? 0
    if (n >= this.max) return false
    this.counts.set(key, n + 1)
    return true
  }

  release (key: string): void {
    const n = (this.counts.get(key) ?? 0) - 1
    if (n <= 0) this.counts.delete(key)
    else this.counts.set(key, n)
  }
}
