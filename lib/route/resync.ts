/**
 * Changes that could not be delivered (the bus refused them, a document could not be read, the outbox gave up on
 * them): their watchers, on whichever instance they are, are owed a `resync`, published on the entity's own channel
 * as soon as the bus takes it. Only the entities that lost a change are told, once per loss; past MAX_OWED entities
 * the debt becomes one announcement for the whole database. Changes of a whole type (a table truncated, or made
 * again) are owed to every watcher of the type, of some tenants or all: one announcement on the gap channel.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { PubSub } from '../bus/bus.js'
import { wrapResync } from './envelope.js'
import { FEED, channelsOf } from './channels.js'
import type { EntityType } from '../entities.js'
import { encodeResync } from '../protocol/index.js'

const MAX_OWED = 10_000
const RETRY_MS = 250

/** The channel every instance listens to for database-wide gaps. */
export function gapChannelOf (prefix: string): string {
  return prefix + ':$gap'
}

export class OwedResyncs {
  /** channel → the wrapped resync frame */
  private readonly owed = new Map<string, string>()
  /** database → reason, once too many entities are owed */
  private readonly databases = new Map<string, string>()
  /** announcements of resyncs of whole types, as the gap channel carries them */
  private readonly types = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private settling = false
  private closed = false
  /** resyncs published for lost changes */
  published = 0

  constructor (private readonly bus: PubSub, private readonly prefix: string, private readonly log: FastifyBaseLogger) {}

  /** Owes the watchers of each channel its resync frame, for a change they did not get. */
  owe (database: string, debts: ReadonlyArray<readonly [channel: string, frame: string]>): void {
    if (this.closed) return
    if (this.owed.size + debts.length > MAX_OWED) {
      this.databases.set(database, 'delivery_failed')
    } else {
      for (const [channel, frame] of debts) {
        if (!this.owed.has(channel)) this.owed.set(channel, wrapResync(frame))
      }
    }
    this.schedule(0)
  }

  /** The watchers of the entity, and of its type's feed, are owed a resync for a change they will not get. */
  oweChange (entity: EntityType, database: string, entityId: string, tenantId: string | null): void {
    const entityChannels = tenantId === null ? 1 : 2
    this.owe(database, channelsOf(this.prefix, entity, entityId, tenantId).map((channel, i) =>
      [channel, encodeResync('delivery_failed', { entityType: entity.name, entityId: i < entityChannels ? entityId : FEED, tenantId })] as const))
  }

  /**
   * The watchers of these types fed by `database` — of `tenants` only (with those of every tenant), or of all — are
   * owed a resync: the type's table was truncated, or made again. Wherever they are, and feeds included.
   */
  oweTypes (database: string, entityTypes: string[], tenants: string[] | null, reason: string): void {
    if (this.closed || entityTypes.length === 0) return
    this.types.add(JSON.stringify({ database, reason, types: entityTypes, tenants }))
    this.schedule(0)
  }

  private schedule (ms: number): void {
    if (this.timer === null && !this.closed) this.timer = setTimeout(() => { this.timer = null; void this.settle() }, ms)
  }

  /** Publishes what is owed; what the bus refuses is tried again shortly. */
  private async settle (): Promise<void> {
    if (this.settling) return
    this.settling = true
    let refused = false
    try {
      // changes that never reached the channels' history: no resume may pass them
      if (this.databases.size > 0 || this.types.size > 0) await this.bus.history?.markGap()
      // each taken out before it is sent: the same debt owed again while it is on its way stays owed
      for (const [database, reason] of [...this.databases]) {
        this.databases.delete(database)
        await this.sent(() => this.bus.publish(gapChannelOf(this.prefix), JSON.stringify({ database, reason })), () => this.databases.set(database, this.databases.get(database) ?? reason))
        this.log.warn({ database, reason }, 'changefeed: changes lost; every watcher of the database told to resync')
      }
      for (const message of [...this.types]) {
        this.types.delete(message)
        await this.sent(() => this.bus.publish(gapChannelOf(this.prefix), message), () => this.types.add(message))
      }
      for (const [channel, message] of [...this.owed]) {
        this.owed.delete(channel)
        // the lost change is not in the channel's history: it starts again (a new epoch), so no resume passes it
        await this.sent(async () => { await this.bus.history?.reset(channel); await this.bus.publish(channel, message) }, () => this.owed.set(channel, this.owed.get(channel) ?? message))
        this.published++
      }
    } catch {
      // the bus is down: it reports that itself; the debt waits
      refused = true
    } finally {
      this.settling = false
    }
    if (this.owed.size > 0 || this.databases.size > 0 || this.types.size > 0) this.schedule(refused ? RETRY_MS : 0)
  }

  /** Sends; when the bus refuses, the debt is owed again (unless owed anew meanwhile) and the refusal goes on. */
  private async sent (send: () => Promise<unknown>, oweAgain: () => void): Promise<void> {
    try {
      await send()
    } catch (err) {
      oweAgain()
      throw err
    }
  }

  close (): void {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }
}
