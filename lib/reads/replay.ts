/**
 * Outbox mode: a client resuming with `since` gets the changes of its entity it missed, read from the outbox,
 * as the same notification frames it would have received live.
 */
import { coalesceRows } from '../capture/coalesce.js'
import { Outbox } from '../capture/outbox.js'
import type { Database } from '../capture/database.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import type { EventStoreOf, Notices } from '../route/notices.js'
import type { ResolvedOptions } from '../options.js'

/** Where a database's outbox is read for `since` replays (outbox mode). */
export interface ReplaySource { outbox: Outbox, tables: string[], maxReplay: number }

/** Outbox mode: where a database's changes are replayed from (undefined in notify mode), a tenant's found while running too. */
export type ReplaySources = (database: string) => ReplaySource | undefined

export function replaySourcesOf (options: ResolvedOptions, eventStore: EventStoreOf): ReplaySources {
  if (options.capture.mode !== 'outbox') return () => undefined
  const outbox = new Outbox(options.capture.channel)
  return (database) => {
    const store = eventStore(database)
    return { outbox, tables: store === null ? [] : [store.table, store.streams], maxReplay: options.capture.outbox.maxReplay }
  }
}

/** `owner`: as on a live notification (lib/route/notices.ts), what delivery checks before the frame may reach a socket */
export type ReplayedFrames = Array<{ frame: string, position: string, owner?: string | null }>

export class Replayer {
  constructor (
    private readonly registry: EntityRegistry,
    private readonly databases: ReadonlyMap<string, Database>,
    private readonly sources: ReplaySources,
    private readonly notices: Notices,
    /** notify mode: the bus's history of each channel (lib/reads/history.ts) */
    private readonly history: Pick<Replayer, 'replay' | 'head'> | null = null
  ) {}

  /**
   * Notify mode: the entity's channel position now, from which a subscription that starts now may later resume
   * (null: no history, or outbox mode, whose positions are the changes' own).
   */
  async head (entity: EntityType, entityId: string, tenantId: string | null): Promise<string | null> {
    const database = this.registry.databaseFor(entity, tenantId)
    if (this.history === null || (database !== undefined && this.sources(database) !== undefined)) return null
    return await this.history.head(entity, entityId, tenantId)
  }

  /**
   * The changes of one (tenant's) entity after `since`, as notification frames, oldest first; null when they
   * cannot all be given (a feed, a position of another epoch, pruned, or too many). Notify mode: from the channel's
   * history (a feed's too).
   */
  async replay (entity: EntityType, entityId: string, tenantId: string | null, since: string): Promise<ReplayedFrames | null> {
    const database = this.registry.databaseFor(entity, tenantId)
    const source = database === undefined ? undefined : this.sources(database)
    if (source === undefined && this.history !== null) return await this.history.replay(entity, entityId, tenantId, since)
    const db = database === undefined ? undefined : this.databases.get(database)
    if (database === undefined || source === undefined || db === undefined || entityId === '*') return null
    const tables = [entity.table, ...source.tables]
    const rowTenant = entity.tenancy === 'conjoined' ? tenantId : null
    const rows = await source.outbox.replay(async (text, params) => await db.query(text, params), { tables, entityId, tenantId: rowTenant, since, limit: source.maxReplay })
    if (rows === null) return null
    const frames: ReplayedFrames = []
    for (const change of coalesceRows(database, this.registry.tenantOfDatabase(database), rows)) {
      // the entity's table (or a partition of it, or the event store) was emptied since: what it holds now is not a
      // sum of changes
      if (change.truncated !== undefined) return null
      if (this.notices.entityOf(change, { count: false })?.name !== entity.name) continue
      const { frame, owner } = await this.notices.noticeOf(entity, change, this.notices.tenantOf(entity, change))
      frames.push({ frame, position: change.position, owner })
    }
    return frames
  }
}
