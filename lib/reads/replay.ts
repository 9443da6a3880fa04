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

/** Outbox mode: each database's replay source (none in notify mode). */
export function replaySourcesOf (options: ResolvedOptions, databases: Iterable<string>, eventStore: EventStoreOf): Map<string, ReplaySource> {
  const sources = new Map<string, ReplaySource>()
  if (options.capture.mode !== 'outbox') return sources
  for (const name of databases) {
    const store = eventStore(name)
    sources.set(name, { outbox: new Outbox(options.capture.channel), tables: store === null ? [] : [store.table, store.streams], maxReplay: options.capture.outbox.maxReplay })
  }
  return sources
}

/** `owner`: as on a live notification (lib/route/notices.ts), what delivery checks before the frame may reach a socket */
export type ReplayedFrames = Array<{ frame: string, position: string, owner?: string | null }>

export class Replayer {
  constructor (
    private readonly registry: EntityRegistry,
    private readonly databases: ReadonlyMap<string, Database>,
    private readonly sources: ReadonlyMap<string, ReplaySource>,
    private readonly notices: Notices
  ) {}

  /**
   * The changes of one (tenant's) entity after `since`, as notification frames, oldest first; null when they
   * cannot all be given (notify mode, a feed, a position of another epoch, pruned, or too many).
   */
  async replay (entity: EntityType, entityId: string, tenantId: string | null, since: string): Promise<ReplayedFrames | null> {
    const database = this.registry.databaseFor(entity, tenantId)
    const source = database === undefined ? undefined : this.sources.get(database)
    const db = database === undefined ? undefined : this.databases.get(database)
    if (database === undefined || source === undefined || db === undefined || entityId === '*') return null
    const tables = [entity.table, ...source.tables]
    const rowTenant = entity.tenancy === 'conjoined' ? tenantId : null
    const rows = await source.outbox.replay(async (text, params) => await db.query(text, params), { tables, entityId, tenantId: rowTenant, since, limit: source.maxReplay })
    if (rows === null) return null
    const frames: ReplayedFrames = []
    for (const change of coalesceRows(database, this.registry.tenantOfDatabase(database), rows)) {
      if (this.notices.entityOf(change, { count: false })?.name !== entity.name) continue
      const { frame, owner } = await this.notices.noticeOf(entity, change, this.notices.tenantOf(entity, change))
      frames.push({ frame, position: change.position, owner })
    }
    return frames
  }
}
