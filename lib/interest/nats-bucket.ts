/**
 * The NATS interest store's key-value bucket as this instance follows it (lib/interest/nats.ts): every entry one KV
 * watch delivered, by channel and by type, and whether the watch has caught up with the stream's last write.
 */
import type { KvEntry, QueuedIterator } from 'nats'

/** one key part (a channel, a type) → instance id → that instance's number */
type Entries = Map<string, Map<string, number>>

/** how long a question waits for the watch to reach the stream's last write before it answers "watched" */
const CATCH_UP_MS = 2000

/** The bucket as one KV watch delivered it so far. */
export class BucketView {
  readonly watching: Entries = new Map()
  readonly typed: Entries = new Map()
  readonly expiries = new Map<string, number>()
  /** instance id → its w. and t. keys held (an instance with keys and no heartbeat is cleaned up) */
  readonly held = new Map<string, number>()
  /** removed keys → when their marker was written */
  readonly markers = new Map<string, number>()
  /** stream sequence of the last entry applied */
  seen = 0
  ended = false
  private readonly waiting = new Set<{ seq: number, done: (ok: boolean) => void }>()

  constructor (private readonly watch: QueuedIterator<KvEntry>) {}

  /** Applies the watch's entries until it ends; `onEnd` unless stopped. */
  async run (onEnd: (err?: Error) => void): Promise<void> {
    let failure: Error | undefined
    try {
      for await (const entry of this.watch) this.apply(entry)
    } catch (err) {
      failure = err as Error
    }
    if (this.ended) return
    this.stop()
    onEnd(failure)
  }

  stop (): void {
    this.ended = true
    this.watch.stop()
    for (const waiter of this.waiting) waiter.done(false)
  }

  private apply (entry: KvEntry): void {
    const [kind, part, id] = entry.key.split('.')
    const put = entry.operation === 'PUT'
    if (put) this.markers.delete(entry.key)
    else this.markers.set(entry.key, entry.created.getTime())
    if (kind === 'i') {
      if (put) this.expiries.set(part, entry.json<{ expiresAt: number }>().expiresAt)
      else this.expiries.delete(part)
    } else if ((kind === 'w' || kind === 't') && id !== undefined) {
      const entries = kind === 'w' ? this.watching : this.typed
      const numbers = entries.get(part) ?? new Map<string, number>()
      const had = numbers.has(id)
      if (put) numbers.set(id, Number(entry.string()))
      else numbers.delete(id)
      if (numbers.size === 0) entries.delete(part)
      else entries.set(part, numbers)
      const held = (this.held.get(id) ?? 0) + (put && !had ? 1 : !put && had ? -1 : 0)
      if (held === 0) this.held.delete(id)
      else this.held.set(id, held)
    }
    this.seen = entry.revision
    for (const waiter of this.waiting) if (waiter.seq <= this.seen) waiter.done(true)
  }

  /** true once every write of a stream in `state` is applied; false after CATCH_UP_MS or when stopped. */
  async reached (state: { last_seq: number, messages: number }): Promise<boolean> {
    // nothing stored: the last sequence may be a marker purged since, which no watch delivers
    if (this.seen >= state.last_seq || state.messages === 0) return true
    if (this.ended) return false
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => waiter.done(false), CATCH_UP_MS)
      const waiter = {
        seq: state.last_seq,
        done: (ok: boolean) => {
          clearTimeout(timer)
          this.waiting.delete(waiter)
          resolve(ok)
        }
      }
      this.waiting.add(waiter)
    })
  }

  /** The other instances' sum in `entries` (an instance's own numbers are its local counts). */
  othersIn (entries: Entries, part: string, self: string): number {
    let sum = 0
    for (const [id, n] of entries.get(part) ?? []) if (id !== self) sum += n
    return sum
  }
}
