/**
 * Changes that are not delivered for a reason other than "nobody watches": counted by reason
 * (`changefeed.changes{outcome=<reason>}`) and logged at warn level once per reason and table, so a misconfiguration
 * shows in the log without flooding it.
 */
import type { FastifyBaseLogger } from 'fastify'

export type DropReason =
  /** a NOTIFY on the channel that the capture triggers did not sign (another role's pg_notify) */
  | 'forged'
  /** a signed NOTIFY sent again: received already, or of a transaction that was over before it could still arrive */
  | 'replayed'
  /** a change a trigger could not announce: its writing role lacked the right (granted once the server sees it) */
  | 'unannounced'
  /** a signed NOTIFY that is not a change this version understands */
  | 'malformed'
  /** a change of a table no entity type is bound to */
  | 'unknown_table'
  /** an event appended to a stream started without an aggregate type (see capture.events.untypedAs) */
  | 'untyped_stream'
  /** an event of a stream whose type matches no entity type */
  | 'unknown_stream_type'
  /** an event-store change from a table that is not the configured event store */
  | 'not_event_store'

const MAX_LOGGED = 10_000

export class Drops {
  readonly counts: Partial<Record<DropReason, number>> = {}
  private readonly logged = new Set<string>()

  constructor (private readonly log: FastifyBaseLogger) {}

  drop (reason: DropReason, where: { database: string, table?: string, detail?: string }): void {
    this.counts[reason] = (this.counts[reason] ?? 0) + 1
    const key = reason + '\u0000' + where.database + '\u0000' + (where.table ?? '')
    if (this.logged.has(key)) return
    if (this.logged.size >= MAX_LOGGED) this.logged.clear()
    this.logged.add(key)
    this.log.warn({ reason, ...where }, 'changefeed: a change was dropped (logged once per reason and table; see changefeed.changes)')
  }
}
