/** Per-connection and per-server limits: token buckets, connection counters, the read limiter. */

/** A token bucket: `capacity` at once, refilled at `perSecond`. Lazily refilled: no timers. */
export class TokenBucket {
  private tokens: number
  private last = Date.now()

  constructor (private readonly capacity: number, private readonly perSecond: number) {
    this.tokens = capacity
  }

  /** Takes `count` tokens, or none when there are fewer. */
  take (count = 1): boolean {
    const now = Date.now()
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) / 1000) * this.perSecond)
    this.last = now
    if (this.tokens < count) return false
    this.tokens -= count
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

/**
 * `since` replays read the outbox: bounded per IP address (a token bucket each; burst ten seconds' worth, so a
 * reconnecting page resumes all its subscriptions at once) and across the server (at most `concurrency` queries at
 * once, at most `queue` waiting). A replay refused here is answered `recovered: false`: the client refetches.
 */
export class ReplayLimiter {
  private readonly perIp = new Map<string, TokenBucket>()
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (private readonly perIpPerSecond: number, private readonly concurrency = 16, private readonly queue = 10_000) {}

  /** Runs `replay` when admitted; null when refused. */
  async run<T> (ip: string, replay: () => Promise<T>): Promise<T | null> {
    let bucket = this.perIp.get(ip)
    if (bucket === undefined) {
      if (this.perIp.size >= 100_000) this.perIp.clear()
      bucket = new TokenBucket(this.perIpPerSecond * 10, this.perIpPerSecond)
      this.perIp.set(ip, bucket)
    }
    if (!bucket.take()) return null
    if (this.running >= this.concurrency) {
      if (this.waiting.length >= this.queue) return null
      await new Promise<void>((resolve) => this.waiting.push(resolve))
    } else {
      this.running++
    }
    try {
      return await replay()
    } finally {
      // the slot passes to the next waiting replay, or is freed
      const next = this.waiting.shift()
      if (next !== undefined) next()
      else this.running--
    }
  }
}
