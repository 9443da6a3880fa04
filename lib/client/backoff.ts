/**
 * When to try connecting again: full-jitter exponential backoff, one retry pending at a time, and an attempt count
 * that starts over once a connection has stayed up long enough (a link that flaps does not retry at full speed).
 */

/** How long a request the server refused for now (`rate_limited`, `internal_error`) waits: 250 to 1,250 ms. `random`: [0, 1). */
export function retryDelay (random: number): number {
  return 250 + Math.floor(random * 1000)
}

/** Full jitter: a uniformly random delay up to min(maxMs, initialMs · 2^(attempt-1)). */
export function backoffDelay (attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1)))
}

export interface BackoffOptions {
  /** the cap of the first retry's delay */
  initialMs: number
  /** the cap of any retry's delay */
  maxMs: number
  /** how long a connection must stay up before the attempt count starts over */
  resetAfterMs: number
}

export class Backoff {
  /** retries since the last connection that stayed up (1 = first retry) */
  attempt = 0
  private retry: (() => void) | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private stableTimer: ReturnType<typeof setTimeout> | undefined

  constructor (private readonly options: BackoffOptions, private readonly random: () => number) {}

  /** A retry is waiting for its time. */
  get pending (): boolean {
    return this.retryTimer !== undefined
  }

  /**
   * Counts one more attempt and runs `retry` after its delay; returns the delay. `hintMs`: the server said when to
   * come back (a deploy's 1012): that, plus as much again at most, at random, so its sockets do not come back at once.
   */
  schedule (retry: () => void, hintMs?: number): number {
    this.cancelRetry()
    this.attempt++
    const delay = hintMs === undefined
      ? backoffDelay(this.attempt, this.options.initialMs, this.options.maxMs, this.random)
      : hintMs + Math.floor(this.random() * hintMs)
    this.retry = retry
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      this.retry = undefined
      retry()
    }, delay)
    return delay
  }

  /** Runs the pending retry now (the page woke up or came back online: waiting longer helps nobody). */
  hurry (): void {
    const retry = this.retry
    if (retry === undefined) return
    this.cancelRetry()
    retry()
  }

  /** A connection is up: once it has stayed up `resetAfterMs`, the next failure retries from the first delay. */
  connected (): void {
    clearTimeout(this.stableTimer)
    this.stableTimer = setTimeout(() => { this.attempt = 0 }, this.options.resetAfterMs)
  }

  /** The connection went down before it counted as stable (or after: then the count is already 0). */
  disconnected (): void {
    clearTimeout(this.stableTimer)
    this.stableTimer = undefined
  }

  cancel (): void {
    this.cancelRetry()
    this.disconnected()
  }

  private cancelRetry (): void {
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.retry = undefined
  }
}
