/**
 * History per channel, kept where the bus lives (a ring in this process, a Redis stream) and written by the one
 * publish that delivers a message, so its order is the delivery order. A change goes out on several channels (its
 * entity's, every tenant's, its type's feeds): the first it is appended to gives it a position, `<epoch>:<offset>`
 * (that channel's epoch, and the message's offset in it), and it carries that one position on every channel, live
 * and in their histories alike, as
 *
 *   @<epoch>:<offset> <message>
 *
 * so a client watching the entity and its feed tells the one change on both. The epoch is drawn anew whenever a
 * channel's history starts again (first message, expired, lost by the broker, or a change of the channel lost:
 * `reset`), so a position of an older history is never read in a newer one. A history may start before its first
 * message (`head`: a subscription's start, offset 0), so a client that has had no message yet resumes too. A resume (`after`) is exact or refused:
 * the entry at `since` must be held, and no gap (changes that never reached the history, `markGap`) marked after it
 * was written.
 */
import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import { parsePosition } from '../protocol/wire.js'

/** How much of a channel's past is kept. */
export interface HistoryLimits {
  /** messages kept */
  size: number
  /** the history is dropped this long after the channel's last message */
  ttlSeconds: number
}

/**
 * A captured change's identity on a channel (`key`), kept with its entry. `check`: the change may be there already (a
 * new leader publishing what the old one may have published before it stopped): when an entry of the channel's
 * recent past has the key, nothing is published and its position is the answer.
 */
export interface Dedupe { key: string, check: boolean }

export interface ChannelHistory {
  /**
   * Publishes `message` on `channel` and appends it to the channel's history, in one step, at `position` (the change's,
   * given by the channel it went to first), or at the channel's next one; resolves with the position (undefined: the
   * channel keeps no history after all, and it was published as is).
   */
  append(channel: string, message: string, limits: HistoryLimits, position?: string, dedupe?: Dedupe): Promise<string | undefined>
  /**
   * The messages after `since` (as they went out: with their position), oldest first; null when they cannot all be
   * given (another epoch, no longer held, or a gap marked after `since`). `limits`: the channel's (where they say
   * where its history is kept).
   */
  after(channel: string, since: string, limits?: HistoryLimits): Promise<string[] | null>
  /**
   * The channel's position now: that of its last message, or, for a history with none, of its start (made now, at
   * offset 0). Every later message of the channel is `after` it.
   */
  head(channel: string, limits: HistoryLimits): Promise<string | null>
  /**
   * The channels are watched: their histories must not expire while they are quiet, so that a client holding a
   * channel's last position resumes from it however long ago the channel last changed (lib/bus/history-keeper.ts).
   */
  keep(channels: readonly string[], limits: HistoryLimits): Promise<void>
  /** A message of the channel was lost: its history starts again, with a new epoch. */
  reset(channel: string): Promise<void>
  /** Messages may have been lost on any channel (a listener gap): no resume may cross this moment. */
  markGap(): Promise<void>
  /** bytes of history held by this process (null: held by the broker) */
  readonly bytes: number | null
}

/** A new epoch: eight hex digits, as every resumable position has. */
export const newEpoch = (): string => randomBytes(4).toString('hex')

/** A message as a channel with history carries it. */
export const withPosition = (position: string, message: string): string => '@' + position + ' ' + message

/** A message's channel position and the message; position null for a message of a channel without history. */
export function splitPosition (message: string): { position: string | null, message: string } {
  if (message[0] !== '@') return { position: null, message }
  const end = message.indexOf(' ')
  return end < 0 ? { position: null, message } : { position: message.slice(1, end), message: message.slice(end + 1) }
}

/** The epoch and offset of a resume's `since`; null for a string that is not a position. */
export const sinceOf = (since: string): { epoch: string, pos: number } | null => parsePosition(since)

/**
 * The history of a type's channels: null when it has none (outbox mode keeps its own; `history: false`; size 0).
 */
export function historyLimitsOf (options: Pick<ResolvedOptions, 'history' | 'entities' | 'capture'>): (entityType: string) => HistoryLimits | null {
  if (options.capture.mode !== 'notify') return () => null
  const own = new Map<string, HistoryLimits | null>()
  const top = options.history
  return (entityType) => {
    let limits = own.get(entityType)
    if (limits !== undefined) return limits
    const declared = options.entities[entityType]?.history
    const merged = declared === false ? null : { size: declared?.size ?? top.size, ttlSeconds: declared?.ttlSeconds ?? top.ttlSeconds }
    limits = merged === null || merged.size === 0 ? null : merged
    own.set(entityType, limits)
    return limits
  }
}

/** the longest a channel nobody watches any more keeps its history going (lib/interest/interest.ts) */
const LINGER_MAX_MS = 60_000

/** How long a type's channel keeps its history going after its last watcher left: its window, at most a minute. */
export function historyLingerOf (limits: (entityType: string) => HistoryLimits | null): (entityType: string) => number {
  return (entityType) => Math.min(LINGER_MAX_MS, (limits(entityType)?.ttlSeconds ?? 0) * 1000)
}

/** channels kept in one call */
const KEEP_BATCH = 500

/**
 * Keeps the histories of the channels this instance's sockets watch from expiring while quiet (`keep`): a client that
 * holds a channel's last position, or its start, resumes from it however long ago the channel last changed, as long
 * as someone watched it. Every third of the shortest history ttl, each such channel once, by its type's limits. A
 * sweep costs one command per watched channel (Redis: PEXPIRE; NATS: a read, and a keep-alive message for a channel
 * quiet for half its ttl; memory: the walk). Returns the stop.
 */
export function keepHistories (
  history: ChannelHistory | null,
  watched: { channels(): Iterable<[string, { entityType: string }]> },
  options: Pick<ResolvedOptions, 'history' | 'entities' | 'capture'>,
  log: FastifyBaseLogger
): () => void {
  const limits = historyLimitsOf(options)
  const ttls = [options.history.ttlSeconds, ...Object.keys(options.entities).map((type) => limits(type)?.ttlSeconds ?? Infinity)]
  if (history === null || options.capture.mode !== 'notify') return () => {}
  let sweeping = false
  const sweep = async (): Promise<void> => {
    const byType = new Map<string, string[]>()
    for (const [channel, { entityType }] of watched.channels()) {
      const channels = byType.get(entityType)
      if (channels === undefined) byType.set(entityType, [channel])
      else channels.push(channel)
    }
    let failure: Error | null = null
    for (const [entityType, channels] of byType) {
      const kept = limits(entityType)
      if (kept === null) continue
      for (let i = 0; i < channels.length; i += KEEP_BATCH) await history.keep(channels.slice(i, i + KEEP_BATCH), kept).catch((err: Error) => { failure = err })
    }
    if (failure !== null) log.warn({ err: (failure as Error).message }, 'changefeed: keeping the watched channels\' history failed; a quiet one may expire (its clients then refetch)')
  }
  const timer = setInterval(() => {
    if (sweeping) return
    sweeping = true
    void sweep().finally(() => { sweeping = false })
  }, Math.max(100, (Math.min(...ttls) * 1000) / 3))
  timer.unref()
  return () => clearInterval(timer)
}
