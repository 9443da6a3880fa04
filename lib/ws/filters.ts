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
import type { Fanout, FrameMeta, Receiver } from './fanout.js'
import { SnapshotUnavailable, type SnapshotEntity, type SnapshotReader, type Visibility } from '../reads/snapshot.js'
import { DocumentKeys, forSubscription, matches, scalarKey, valueAt, type Condition } from '../protocol/index.js'
import { PreparedFrame } from './prepared.js'

/** A change of the type as the groups see it. */
interface TypeChange {
  frame: string
  changeType: string
  txid: string | undefined
  /** tenant and id */
  key: string
  /** the document after the change; null: deleted; undefined: not known (a minimal frame: the read found nothing) */
  document: unknown
  /** the document's values as conditions compare them, read once for every group */
  keys: DocumentKeys
}

/** Whose a seat is: the connection (its id), and its client address. */
export interface FilterHolder {
  readonly id: number
  readonly ip: string
}

/** A socket's place in a group: frames wait while its own snapshot is read, then those the snapshot saw are skipped. */
interface Seat {
  deferred: Array<{ frame: string, txid: string | undefined }> | null
  saw: Visibility | null
  holder: FilterHolder
}

export class FilterLimitError extends Error {}

/** a membership read after a gap that failed is tried again after this long */
const RELOAD_RETRY_MS = 1000

const entityKey = (tenantId: string | null | undefined, entityId: string): string => (tenantId ?? '') + '\u0000' + entityId

/** The watchers of one filter of one feed channel, and the entities that match it. */
class FilterGroup {
  readonly members = new Set<string>()
  readonly seats = new Map<Receiver, Seat>()
  /** changes that came while the membership was being read */
  pending: TypeChange[] | null = []
  /** after the read: changes it saw may still be on their way, and are skipped until a later one comes */
  saw: Visibility | null = null
  /** the membership read: the matching entities (with documents when its creator asked for a snapshot) */
  loaded: Promise<SnapshotEntity[]> = Promise.resolve([])

  /**
   * `read`: the matching entities, with their documents or not; past `limited` matches (limits.maxFilterMatches) it
   * rejects with SnapshotUnavailable, without it (a reload of a group that grew past it live) it reads them all
   */
  constructor (readonly subscriptionId: string, readonly conditions: Condition[], readonly read: (documents: boolean, limited?: boolean) => Promise<{ entities: SnapshotEntity[], visibility: Visibility }>) {}

  /** Applies a change of the type: membership, then the frame to the watchers when it concerns the filter. */
  apply (change: TypeChange, index: TypeFilters): void {
    if (this.pending !== null) {
      this.pending.push(change)
      return
    }
    if (this.saw !== null) {
      if (this.saw.saw(change.txid)) return
      this.saw = null
    }
    const was = this.members.has(change.key)
    const now = change.document === undefined ? was : matches(change.document, this.conditions, change.keys)
    if (!was && !now) return
    let changeType = change.changeType
    if (now && !was) {
      changeType = 'entered'
      this.members.add(change.key)
      index.joined(change.key, this)
    } else if (was && !now) {
      if (changeType !== 'deleted') changeType = 'left'
      this.members.delete(change.key)
      index.left(change.key, this)
    }
    this.emit(forSubscription(change.frame, changeType, this.subscriptionId), change.txid)
  }

  emit (frame: string, txid: string | undefined): void {
    const shared = new PreparedFrame(frame)
    for (const [receiver, seat] of this.seats) {
      if (seat.deferred !== null) {
        seat.deferred.push({ frame, txid })
        continue
      }
      if (seat.saw !== null) {
        if (seat.saw.saw(txid)) continue
        seat.saw = null
      }
      receiver.deliver(frame, undefined, shared)
    }
  }
}

/** Every filter of one feed channel on this instance: the one receiver of the channel. */
class TypeFilters implements Receiver {
  readonly groups = new Map<string, FilterGroup>()
  /** groups by their first condition's path, then by each value it allows */
  private readonly index = new Map<string, { parts: string[], byValue: Map<string, Set<FilterGroup>> }>()
  /** entity key → the groups it is a member of */
  private readonly memberOf = new Map<string, Set<FilterGroup>>()
  /** groups reading their membership: they see every change */
  private readonly loading = new Set<FilterGroup>()
  /** the feed channel is watched */
  ready: Promise<void> = Promise.resolve()

  add (group: FilterGroup): void {
    this.groups.set(group.subscriptionId, group)
    this.loading.add(group)
  }

  /** The group's membership is read: from now on it sees only the changes that may concern it. */
  loadedFrom (group: FilterGroup, entities: readonly SnapshotEntity[], saw: Visibility): void {
    this.loading.delete(group)
    for (const { entityId, tenantId } of entities) {
      const key = entityKey(tenantId, entityId)
      group.members.add(key)
      this.joined(key, group)
    }
    const [first] = group.conditions
    let path = this.index.get(first.path)
    if (path === undefined) this.index.set(first.path, path = { parts: first.parts, byValue: new Map() })
    for (const value of first.values) {
      let groups = path.byValue.get(value)
      if (groups === undefined) path.byValue.set(value, groups = new Set())
      groups.add(group)
    }
    const pending = group.pending ?? []
    group.pending = null
    group.saw = saw
    for (const change of pending) group.apply(change, this)
  }

  /** Reads the group's members again: after a gap its membership may be out of date. */
  private reload (group: FilterGroup): void {
    if (group.pending !== null) return
    this.unindex(group)
    this.loading.add(group)
    const attempt = (): void => {
      // what waited so far was committed before this read starts: the read has it
      group.pending = []
      group.loaded = group.read(false, false).then(({ entities, visibility }) => {
        if (this.groups.get(group.subscriptionId) === group) this.loadedFrom(group, entities, visibility)
        return entities
      })
      group.loaded.catch(() => {
        setTimeout(() => { if (this.groups.get(group.subscriptionId) === group) attempt() }, RELOAD_RETRY_MS).unref()
      })
    }
    attempt()
  }

  remove (group: FilterGroup): void {
    this.groups.delete(group.subscriptionId)
    this.loading.delete(group)
    this.unindex(group)
  }

  /** Takes the group out of the index, and its members out of the membership index. */
  private unindex (group: FilterGroup): void {
    for (const key of group.members) this.left(key, group)
    group.members.clear()
    const [first] = group.conditions
    const path = this.index.get(first.path)
    for (const value of first.values) {
      const groups = path?.byValue.get(value)
      groups?.delete(group)
      if (groups?.size === 0) path?.byValue.delete(value)
    }
    if (path?.byValue.size === 0) this.index.delete(first.path)
  }

  joined (key: string, group: FilterGroup): void {
    let groups = this.memberOf.get(key)
    if (groups === undefined) this.memberOf.set(key, groups = new Set())
    groups.add(group)
  }

  left (key: string, group: FilterGroup): void {
    const groups = this.memberOf.get(key)
    groups?.delete(group)
    if (groups?.size === 0) this.memberOf.delete(key)
  }

  deliver (frame: string, meta?: FrameMeta): boolean {
    if (meta === undefined) {
      // a resync: every filter of the type may have missed a change, so its watchers refetch, and it reads its
      // members again (changes meanwhile wait, as when it was made)
      for (const group of this.groups.values()) {
        group.emit(frame, undefined)
        this.reload(group)
      }
      return true
    }
    const change = changeOf(frame, meta)
    if (change === null) return true
    const candidates = new Set(this.loading)
    for (const group of this.memberOf.get(change.key) ?? []) candidates.add(group)
    if (change.document !== undefined && change.document !== null) {
      // read directly: every path here is another (the cache is for the groups' conditions, which share paths)
      for (const { parts, byValue } of this.index.values()) {
        const value = scalarKey(valueAt(change.document, parts))
        for (const group of (value === undefined ? undefined : byValue.get(value)) ?? []) candidates.add(group)
      }
    }
    for (const group of candidates) group.apply(change, this)
    return true
  }
}

/** What the groups need of a feed frame; null for a frame that is not a notification. */
function changeOf (frame: string, meta: FrameMeta): TypeChange | null {
  let parsed: { type?: string, data?: { entityId?: string, tenantId?: string, changeType?: string, payload?: unknown } }
  try {
    parsed = JSON.parse(frame)
  } catch {
    return null
  }
  const data = parsed.data
  if (parsed.type !== 'notification' || data === undefined || typeof data.entityId !== 'string' || typeof data.changeType !== 'string') return null
  const document = data.changeType === 'deleted' ? null : 'payload' in data ? data.payload : undefined
  return { frame, changeType: data.changeType, txid: meta.txid, key: entityKey(data.tenantId, data.entityId), document, keys: new DocumentKeys(document) }
}

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
