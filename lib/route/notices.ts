/**
 * From a captured change to the notification every watcher receives: which entity type and tenant it belongs to
 * (or why it belongs to none: counted by reason, lib/route/drops.ts), and its one encoded frame. A `full` document is
 * read when the trigger did not inline it; appended events whose data did not ride inline are read from the
 * event table.
 */
import type { Change } from '../capture/coalesce.js'
import type { Database } from '../capture/database.js'
import { carriesDocument, type EntityRegistry, type EntityType } from '../entities.js'
import type { Drops } from './drops.js'
import { DocumentReader } from './documents.js'
import { Truncations } from './truncations.js'
import type { EventStoreOf } from '../capture/tables.js'
import { encodeNotification, type NotificationFields, type PayloadTypeName } from '../protocol/index.js'

/** One change's frame, as every watcher receives it, and what delivery needs to know of it. */
export interface Notice {
  frame: string
  payloadType: PayloadTypeName
  tenantId: string | null
  /** owner types with a full document: who the document says owns it (null: nobody); undefined otherwise */
  owner?: string | null
  /** what the frame says besides its payload, and its document (undefined: none): a `delta` type's patch is made of them */
  fields?: Omit<NotificationFields, 'payloadType'>
  document?: unknown
  /**
   * the document was read back after a later transaction wrote the row: it is that newer version, not the one at
   * the change's position, so it goes out whole and is no base for a patch
   */
  stale?: true
}

export type { EventStoreOf } from '../capture/tables.js'

/**
 * The owner a full document of an owner type names (ownerPath), so that delivery can stop a subscription whose
 * owner the document no longer names; undefined where there is nothing to check. A frame without a document (a
 * `deleted` change) carries nothing to protect: its watchers hear of the deletion, and a later document decides.
 */
export function ownerIn (entity: EntityType, payloadType: string, payload: unknown): string | null | undefined {
  if (entity.access !== 'owner' || entity.ownerPath === undefined || entity.ownerPath.length === 0 || payloadType !== 'full') return undefined
  if (payload === undefined || payload === null) return undefined
  let value: unknown = payload
  for (const key of entity.ownerPath) value = value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[key] : undefined
  return typeof value === 'string' || typeof value === 'number' ? String(value) : null
}

export class Notices {
  private readonly documents: DocumentReader
  /** whose watchers a TRUNCATE concerns */
  readonly truncations: Truncations

  constructor (
    private readonly registry: EntityRegistry,
    databases: ReadonlyMap<string, Database>,
    private readonly eventStore: EventStoreOf,
    private readonly drops: Drops
  ) {
    this.documents = new DocumentReader(databases, registry)
    this.truncations = new Truncations(registry, databases, eventStore)
  }

  /** documents and event data read from the database so far */
  get reads (): number {
    return this.documents.reads
  }

  /** The entity type of a change, or undefined (counted and logged as a drop when `count`). */
  entityOf (change: Change, { count = true }: { count?: boolean } = {}): EntityType | undefined {
    const where = { database: change.database, table: `${change.schema}.${change.table}` }
    if (change.events !== undefined || change.changeType === 'archived') {
      const store = this.eventStore(change.database)
      const table = change.events !== undefined ? store?.table : store?.streams
      if (store === null || store.schema !== change.schema || table !== change.table) return this.drop(count, 'not_event_store', where)
      const entity = this.registry.forStream(change.streamType)
      if (entity !== undefined) return entity
      return this.drop(count, change.streamType === null || change.streamType === undefined ? 'untyped_stream' : 'unknown_stream_type',
        { ...where, detail: change.streamType ?? undefined })
    }
    const entity = this.registry.forTable(change.database, change.schema, change.table)
    return entity ?? this.drop(count, 'unknown_table', where)
  }

  private drop (count: boolean, reason: Parameters<Drops['drop']>[0], where: Parameters<Drops['drop']>[1]): undefined {
    if (count) this.drops.drop(reason, where)
    return undefined
  }

  /**
   * The tenant a change belongs to for its type: its database's, its row's (conjoined), or none. A stream of an event
   * store that belongs to tenants belongs to its row's tenant whatever its type said (the type is tenanted from now on).
   */
  tenantOf (entity: EntityType, change: Change): string | null {
    if (entity.tenancy === 'database') return this.registry.tenantOfDatabase(change.database)
    if (entity.tenancy === 'none' && change.tenantId !== null && (change.events !== undefined || change.changeType === 'archived') &&
      this.registry.hasTenantedEventStore(change.database)) this.registry.markConjoined(entity)
    return entity.tenancy === 'conjoined' ? change.tenantId : null
  }

  /** Whether the frame of this change needs a read (a full document, or event data, the trigger did not inline). */
  needsRead (entity: EntityType, change: Change): boolean {
    return change.events !== undefined
      ? change.events.some((e) => !('data' in e))
      : carriesDocument(entity) && change.changeType !== 'deleted' && change.changeType !== 'archived' && !change.hasDoc && change.published !== true
  }

  /** The notification of one change, as every watcher receives it. */
  async noticeOf (entity: EntityType, change: Change, tenantId: string | null): Promise<Notice> {
    const fields = {
      entityType: entity.name,
      entityId: change.id,
      tenantId,
      changeType: change.changeType,
      ts: change.ts,
      version: change.version,
      origin: change.origin,
      position: change.position
    }
    if (change.events !== undefined) {
      await this.documents.events(change)
      return { frame: encodeNotification({ ...fields, payloadType: 'events', payload: change.events }), payloadType: 'events', tenantId }
    }
    let payload: unknown
    let stale = false
    let payloadType: PayloadTypeName = (change.published === true ? change.hasDoc : carriesDocument(entity)) && change.changeType !== 'archived' ? 'full' : 'minimal'
    if (payloadType === 'full' && change.changeType !== 'deleted') {
      if (change.hasDoc) payload = change.doc
      else {
        const read = await this.documents.document(entity, change.database, change.tenantId, change.id)
        payload = read?.data
        stale = read !== undefined && read.txid !== change.txid
      }
      // gone by the time we read it: a later change says so; meanwhile the client refetches
      if (payload === undefined) payloadType = 'minimal'
    }
    const notice: Notice = { frame: encodeNotification({ ...fields, payloadType, payload }), payloadType, tenantId, owner: ownerIn(entity, payloadType, payload), fields, document: payload }
    if (stale) notice.stale = true
    return notice
  }
}
