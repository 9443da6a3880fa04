/**
 * Filtered feeds (`where`): the entities of a type whose document matches. This instance watches the type's feed
 * channel once (whatever the number of filters), and each change is matched once for all of them:
 *
 * - sockets that asked for the same conditions (in canonical form) share one FilterGroup: one membership, one
 *   frame per change;
 * - groups are indexed by the value of their first condition, and entities by the groups they are members of, so a
 *   change visits the groups it may enter or leave, not every group of the type; a visit costs what a filter may
 *   hold (WHERE_LIMITS), each value of the document read once per change for every filter that asks for it;
 * - a group knows its members from a read when it is made (lib/reads/snapshot.ts) and from every change after it; a
 *   change the read already saw is skipped, so none is missed or counted twice.
 *
 * An entity that begins to match reaches the group's watchers as `entered`, one that stops as `left` (`deleted`
 * when it was deleted); changes of members go out as they are. Every frame names the subscription it is for.
 *
 * The filters of a type are one pool (limits.maxFiltersPerType); a connection holds at most
 * limits.maxFiltersPerConnection of them and the sockets of one address at most limits.maxFiltersPerIp different
 * ones, so one client cannot take the pool, nor make every change cost more than its share.
 */
import type { EntityType } from '../entities.js'
import { FEED } from '../route/channels.js'
import type { Fanout, Receiver } from './fanout.js'
import { SnapshotUnavailable, type SnapshotEntity, type SnapshotReader } from '../reads/snapshot.js'
import { FilterGroup, TypeFilters, type FilterHolder, type Seat } from './filter-groups.js'
import type { Condition } from '../protocol/index.js'

export class FilterLimitError extends Error {}

export type { FilterHolder } from './filter-groups.js'

export interface JoinRequest {
  entity: EntityType
  /** the feed's tenant (null: every tenant's) */
  tenantId: string | null
  feedChannel: string
  subscriptionId: string
  conditions: Condition[]
  /** the joiner wants the matching entities and their documents now */
  snapshot: boolean
  /** whose subscription it is (limits.maxFiltersPerConnection, limits.maxFiltersPerIp) */
  holder: FilterHolder
}

/** This instance's filtered feeds. */
export class Filters {
  private readonly byChannel = new Map<string, TypeFilters>()
  /** groups per entity type (limits.maxFiltersPerType) */
  private readonly perType = new Map<string, number>()
  /** seats per connection (limits.maxFiltersPerConnection) */
  private readonly perConnection = new Map<number, number>()
  /** per client address, the groups its sockets hold seats in, and how many seats each (limits.maxFiltersPerIp) */
  private readonly perAddress = new Map<string, Map<FilterGroup, number>>()

  constructor (
    private readonly fanout: Fanout,
    private readonly snapshots: SnapshotReader,
    private readonly limits: { maxFiltersPerType: number, maxFilterMatches: number, maxFiltersPerConnection: number, maxFiltersPerIp: number }
  ) {}

  /** Groups held now. */
  get size (): number {
    let n = 0
    for (const filters of this.byChannel.values()) n += filters.groups.size
    return n
  }

  /** Sockets' subscriptions to filters now. */
  get subscriptions (): number {
    let n = 0
    for (const filters of this.byChannel.values()) for (const group of filters.groups.values()) n += group.seats.size
    return n
  }

  /**
   * Adds `receiver` to the filter's group (made, and its membership read, when it is the first). Resolves with the
   * matching entities when `snapshot` was asked for, and `start`, which lets the filter's frames through (those
   * that came meanwhile first): call it once the subscriber has its reply. Rejects with FilterLimitError,
   * SnapshotUnavailable, or a database or bus error; the receiver is then not added.
   */
  async join (receiver: Receiver, request: JoinRequest): Promise<{ entities: SnapshotEntity[] | null, start: () => void }> {
    const { entity, tenantId, feedChannel, subscriptionId, conditions, holder } = request
    let filters = this.byChannel.get(feedChannel)
    let group = filters?.groups.get(subscriptionId)
    this.admit(holder, group, entity.name)
    if (filters === undefined) {
      const made = filters = new TypeFilters()
      this.byChannel.set(feedChannel, made)
      made.ready = this.fanout.watch(made, feedChannel, entity.name, FEED, tenantId).catch((err) => {
        if (this.byChannel.get(feedChannel) === made) this.byChannel.delete(feedChannel)
        throw err
      })
    }
    const creator = group === undefined
    if (group === undefined) {
      const made = group = new FilterGroup(subscriptionId, conditions, async (documents, limited = true) =>
        await this.snapshots.matching(entity, tenantId, conditions, documents, limited ? this.limits.maxFilterMatches : null))
      filters.add(made)
      this.perType.set(entity.name, (this.perType.get(entity.name) ?? 0) + 1)
      const channel = filters
      made.loaded = (async () => {
        await channel.ready
        const read = await made.read(request.snapshot)
        // every receiver may have left meanwhile: the group is gone then
        if (channel.groups.get(subscriptionId) === made) channel.loadedFrom(made, read.entities, read.visibility)
        return read.entities
      })()
    }
    // frames wait until the subscriber has its reply (and, for a later joiner with a snapshot, its own read)
    const seat: Seat = { deferred: [], saw: null, holder }
    group.seats.set(receiver, seat)
    this.count(holder, group, 1)
    const start = (): void => {
      const deferred = seat.deferred ?? []
      seat.deferred = null
      for (const { frame, txid } of deferred) {
        if (seat.saw?.saw(txid) === true) continue
        seat.saw = null
        receiver.deliver(frame)
      }
    }
    try {
      const members = await group.loaded
      if (creator) return { entities: request.snapshot ? members : null, start }
      if (!request.snapshot) return { entities: null, start }
      const { entities, visibility } = await group.read(true)
      seat.saw = visibility
      return { entities, start }
    } catch (err) {
      await this.leave(receiver, feedChannel, subscriptionId, entity.name)
      // a read the creator could not make is every joiner's failure
      if (creator && group.pending !== null) await this.drop(filters, group, feedChannel, entity.name)
      throw err
    }
  }

  /** Removes `receiver` from the filter's group; the last one out ends the group, and the last group the watch. */
  async leave (receiver: Receiver, feedChannel: string, subscriptionId: string, entityType: string): Promise<void> {
    const filters = this.byChannel.get(feedChannel)
    const group = filters?.groups.get(subscriptionId)
    const seat = group?.seats.get(receiver)
    if (filters === undefined || group === undefined || seat === undefined) return
    group.seats.delete(receiver)
    this.count(seat.holder, group, -1)
    if (group.seats.size > 0) return
    await this.drop(filters, group, feedChannel, entityType)
  }

  /** Throws FilterLimitError when `holder` may not take a seat in `group` (undefined: a group it would make). */
  private admit (holder: FilterHolder, group: FilterGroup | undefined, entityType: string): void {
    const { maxFiltersPerType, maxFiltersPerConnection, maxFiltersPerIp } = this.limits
    if ((this.perConnection.get(holder.id) ?? 0) >= maxFiltersPerConnection) {
      throw new FilterLimitError(`at most ${maxFiltersPerConnection} filtered feeds per connection (limits.maxFiltersPerConnection)`)
    }
    const held = this.perAddress.get(holder.ip)
    if ((group === undefined || held?.has(group) !== true) && (held?.size ?? 0) >= maxFiltersPerIp) {
      throw new FilterLimitError(`at most ${maxFiltersPerIp} different filters for the connections of one address (limits.maxFiltersPerIp)`)
    }
    if (group === undefined && (this.perType.get(entityType) ?? 0) >= maxFiltersPerType) {
      throw new FilterLimitError(`at most ${maxFiltersPerType} different filters of ${entityType} (limits.maxFiltersPerType)`)
    }
  }

  /** Counts a seat of `holder` in `group` taken (1) or given back (-1). */
  private count (holder: FilterHolder, group: FilterGroup, change: 1 | -1): void {
    const seats = (this.perConnection.get(holder.id) ?? 0) + change
    if (seats > 0) this.perConnection.set(holder.id, seats)
    else this.perConnection.delete(holder.id)
    let held = this.perAddress.get(holder.ip)
    if (held === undefined) this.perAddress.set(holder.ip, held = new Map())
    const inGroup = (held.get(group) ?? 0) + change
    if (inGroup > 0) held.set(group, inGroup)
    else held.delete(group)
    if (held.size === 0) this.perAddress.delete(holder.ip)
  }

  private async drop (filters: TypeFilters, group: FilterGroup, feedChannel: string, entityType: string): Promise<void> {
    if (filters.groups.get(group.subscriptionId) !== group) return
    filters.remove(group)
    // a group dropped with seats left (its first read failed: every joiner's failure) gives them back here
    for (const seat of group.seats.values()) this.count(seat.holder, group, -1)
    group.seats.clear()
    const left = (this.perType.get(entityType) ?? 1) - 1
    if (left > 0) this.perType.set(entityType, left)
    else this.perType.delete(entityType)
    if (filters.groups.size > 0 || this.byChannel.get(feedChannel) !== filters) return
    this.byChannel.delete(feedChannel)
    await this.fanout.unwatch(filters, feedChannel, entityType)
  }
}

export { SnapshotUnavailable }
