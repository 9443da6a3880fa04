/**
 * Limits on sign-in attempts, applied before the (deliberately slow) checks run, so that a burst of attempts
 * cannot buy more checks than the limit allows.
 */
import { systemClock, type Clock } from './clock.js'

const WINDOW_MS = 60_000
/** entries per counter; an account name is counted by its first characters */
const MAX_KEYS = 10_000
const MAX_KEY_LENGTH = 256

interface Window { since: number, failures: number, checking: number }

/** Attempts per key (an address, an account) in fixed windows of a minute from the first attempt. */
class AttemptCounts {
  private readonly windows = new Map<string, Window>()
  private sweptAt = -Infinity

  constructor (private readonly max: number, private readonly clock: Clock) {}

  /** The key's window with one more attempt in it, or null when failures and attempts under way reached the limit. */
  reserve (key: string): Window | null {
    const now = this.clock.now()
    let window = this.windows.get(key)
    if (window !== undefined && now - window.since >= WINDOW_MS) {
      window.since = now
      window.failures = 0
    }
    if (window === undefined) {
      this.makeRoom(now)
      window = { since: now, failures: 0, checking: 0 }
      this.windows.set(key, window)
    }
    if (window.failures + window.checking >= this.max) return null
    window.checking++
    return window
  }

  settle (key: string, window: Window, failed: boolean): void {
    window.checking--
    if (failed) {
      if (this.clock.now() - window.since >= WINDOW_MS) {
        window.since = this.clock.now()
        window.failures = 0
      }
      window.failures++
    }
    if (window.failures === 0 && window.checking === 0 && this.windows.get(key) === window) this.windows.delete(key)
  }

  /**
   * Full: expired windows go first (looked for at most once a second), then the oldest one that is not locked, so
   * that filling the map with new keys does not free a locked account; only when every window is locked does the
   * oldest go.
   */
  private makeRoom (now: number): void {
    if (this.windows.size < MAX_KEYS) return
    if (now - this.sweptAt >= 1000) {
      this.sweptAt = now
      for (const [key, w] of this.windows) if (w.checking === 0 && now - w.since >= WINDOW_MS) this.windows.delete(key)
      if (this.windows.size < MAX_KEYS) return
    }
    let victim: string | undefined
    for (const [key, w] of this.windows) {
      if (w.failures + w.checking < this.max) {
        victim = key
        break
      }
    }
    this.windows.delete(victim ?? this.windows.keys().next().value!)
  }
}

/** One attempt under way: `settle(failed)` when its check is done. */
export interface Reservation { settle (failed: boolean): void }

/**
 * Sign-in attempts counted per client address and per account (the Basic username as presented, whether or not
 * such an account exists, so a lock says nothing about which ones do). An attempt is refused without being checked
 * when, in the current minute, the failures plus the attempts still being checked reach `maxFailuresPerMinute`
 * for its address or for its account. A success frees its place and does not clear earlier failures. Hence:
 *
 * - a flood from one address locks that address, for every account, until its minute is over — and the account it
 *   named, once that account has `maxFailuresPerMinute` failures;
 * - a flood at one account from many addresses locks that account, from every address, for the minute;
 * - another account signing in from another address is not affected by either.
 *
 * Tokens have no account before they are verified: they count per address only. Refused attempts count nowhere.
 */
export class SignInLimiter {
  private readonly byAddress: AttemptCounts
  private readonly byAccount: AttemptCounts

  constructor (maxFailuresPerMinute: number, clock: Clock = systemClock) {
    this.byAddress = new AttemptCounts(maxFailuresPerMinute, clock)
    this.byAccount = new AttemptCounts(maxFailuresPerMinute, clock)
  }

  /** null: refused, the address or the account is locked. */
  reserve (address: string, account: string | null): Reservation | null {
    const fromAddress = this.byAddress.reserve(address)
    if (fromAddress === null) return null
    const key = account?.slice(0, MAX_KEY_LENGTH) ?? null
    const ofAccount = key === null ? null : this.byAccount.reserve(key)
    if (key !== null && ofAccount === null) {
      this.byAddress.settle(address, fromAddress, false)
      return null
    }
    return {
      settle: (failed) => {
        this.byAddress.settle(address, fromAddress, failed)
        if (key !== null && ofAccount !== null) this.byAccount.settle(key, ofAccount, failed)
      }
    }
  }
}

/**
 * At most `max` tasks at once (password hashes: each holds a libuv thread and 16 MiB), up to `maxWaiting` more in
 * line; past that an attempt is turned away at once rather than queued without bound.
 */
export class ConcurrencyLimit {
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (private readonly max: number, private readonly maxWaiting: number) {}

  /** true once the caller may run (call `release` after); false at once when the line is full. */
  async acquire (): Promise<boolean> {
    if (this.running < this.max) {
      this.running++
      return true
    }
    if (this.waiting.length >= this.maxWaiting) return false
    await new Promise<void>((resolve) => this.waiting.push(resolve))
    return true
  }

  release (): void {
    const next = this.waiting.shift()
    // the place passes to the next in line, so `running` stays as it is
    if (next !== undefined) next()
    else this.running--
  }
}
